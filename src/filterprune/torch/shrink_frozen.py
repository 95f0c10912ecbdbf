"""``params.shrink_when_frozen``: once the masks freeze, fine-tune the physically smaller model.

When the schedule freezes the masks, the pruned channels are cut out of the training
model *in place*: the model object the user holds stays the same, its layers get
smaller weights (new ``nn.Parameter`` objects). An optimizer holds the old parameters,
so the user registers it once::

    ctrl, model = create_compressed_model(model, config)   # shrink_when_frozen: true
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    ctrl.register_optimizer(optimizer)

At the cut, every registered optimizer's parameter groups are rebound to the new
parameters and their per-parameter state (momentum, Adam moments) is cut the same way,
so training continues without a restart. A copy of the model made after
``create_compressed_model`` (an EMA's averaged model) keeps the old shapes; register it
too (``ctrl.register_copy(ema.module)``) and it is cut alike. ``ctrl.shrunk`` tells the
cut happened. Saved
states remember it: resuming cuts the new model at once, so a shrunk ``state_dict``
loads. ``params.shrunk_memory_format: "channels_last"`` lays the cut model out channels
last (its convs train faster on CPUs); a model whose forward cannot run so stays
contiguous, with a warning. Not for a model wrapped in ``DistributedDataParallel`` (the
wrapper keeps the old parameters).
"""

from __future__ import annotations

import logging
import weakref
from typing import Any

import torch

from ..core.controller import PruningControllerBase, _same_kept
from ..core.pruner import Plan
from ..core.state import check_pruning_state
from ..errors import ConfigError
from ._copy import bake_weights, computed_weights
from .fake_quant import lazy_ranges_paused
from .masks import is_masked, remove_masks
from .shrink import _CUT, _cut, _laid_out, _tensors, cut_output_quantizers, shrink_model

__all__ = ["ShrinkWhenFrozen", "shrink_in_place"]

log = logging.getLogger("filterprune")


def _parameter_cuts(model: torch.nn.Module, keeps: dict, layers: dict) -> list[tuple]:
    """``(owner, attribute, old parameter, roles, keep, groups)`` for every parameter
    the shrink will replace."""
    cuts = []
    for name, keep in keeps.items():
        info = layers.get(name)
        if info is None or info.kind not in _CUT or all(v.all() for v in keep.values()):
            continue
        for owner, attr, roles in _tensors(model, name, info, keep):
            old = owner._parameters.get(attr) if attr in owner._parameters else None
            if old is not None:
                cuts.append((owner, attr, old, roles, keep, info.groups))
    return cuts


def _rebind(optimizer: torch.optim.Optimizer, swaps: dict[int, tuple]) -> None:
    for group in optimizer.param_groups:
        group["params"] = [swaps[id(p)][0] if id(p) in swaps else p for p in group["params"]]
    for new, old, roles, keep, groups in swaps.values():
        state = optimizer.state.pop(old, None)
        if state is None:
            continue
        optimizer.state[new] = {
            k: _cut(v, roles, keep, groups) if torch.is_tensor(v) and v.shape == old.shape else v
            for k, v in state.items()
        }


def _with_inner(optimizers: list[torch.optim.Optimizer]) -> list[torch.optim.Optimizer]:
    """``optimizers`` and those they wrap (Lookahead's or SAM's base optimizer, held as an
    attribute): each keeps state of its own per parameter."""
    out: list[torch.optim.Optimizer] = []
    todo = list(optimizers)
    while todo:
        opt = todo.pop(0)
        if any(opt is o for o in out):
            continue
        out.append(opt)
        todo += [v for v in vars(opt).values() if isinstance(v, torch.optim.Optimizer)]
    return out


def shrink_in_place(model: torch.nn.Module, keeps: dict, layers: dict,
                    optimizers: list[torch.optim.Optimizer]) -> list[torch.Tensor]:  # fmt: skip
    """Cut ``model``'s pruned channels in place and rebind ``optimizers`` to the new
    parameters (their state cut alike). A weight computed from other parameters
    (``weight_norm``) is written in first; it replaces them and starts without state.

    Returns:
        The parameters the cut replaced.
    """
    optimizers = _with_inner(optimizers)
    baked = bake_weights([m for m in model.modules() if is_masked(m)])
    for optimizer in optimizers:
        _replace_sources(optimizer, baked)
    cuts = _parameter_cuts(model, keeps, layers)
    remove_masks(model, bake=False)
    shrink_model(model, keeps, layers)
    swaps = {id(old): (getattr(owner, attr), old, roles, keep, groups)
             for owner, attr, old, roles, keep, groups in cuts
             if getattr(owner, attr) is not old}  # fmt: skip
    for new, old, roles, keep, groups in swaps.values():  # a step still to come uses them
        if old.grad is not None:  # (gradients accumulated across the epoch's end)
            new.grad = _laid_out(_cut(old.grad, roles, keep, groups), new)
    for optimizer in optimizers:
        _rebind(optimizer, swaps)
    _state_like_parameters(optimizers)
    return [old for _, old, *_ in swaps.values()]


def _replace_sources(optimizer: torch.optim.Optimizer, baked: dict) -> None:
    """Put each baked weight where the first parameter it was computed from was."""
    new_of = {id(old): new for new, olds in baked.items() for old in olds}
    for group in optimizer.param_groups:
        params = []
        for p in group["params"]:
            new = new_of.get(id(p))
            if new is None:
                params.append(p)
                continue
            optimizer.state.pop(p, None)
            if all(q is not new for q in params):
                params.append(new)
        group["params"] = params


def _state_like_parameters(optimizers: list[torch.optim.Optimizer]) -> None:
    """Lay each per-parameter state tensor (momentum, Adam moments) out like its
    parameter, so an update adds tensors of one layout (no copy every step)."""
    for optimizer in optimizers:
        for param, state in optimizer.state.items():
            for key, value in state.items():
                if torch.is_tensor(value) and value.shape == param.shape:
                    state[key] = _laid_out(value, param)


def _to_channels_last(model: torch.nn.Module, sample: Any,
                      optimizers: list[torch.optim.Optimizer]) -> str | None:  # fmt: skip
    """Put ``model``'s 4-D tensors (and the optimizers' state for them) in the
    channels_last layout; ``None``, or why the model was left contiguous.

    A forward that views an activation as if it were contiguous breaks in that layout,
    so the model runs ``sample`` once (eval, no grad) before the layout is kept, with
    quantizers that take their range from their first input paused.
    """
    model.to(memory_format=torch.channels_last)
    if sample is not None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        was = model.training
        try:
            with torch.no_grad(), lazy_ranges_paused(model):
                model.eval()(*[t.to(device) if torch.is_tensor(t) else t for t in sample])
        except Exception as err:  # noqa: BLE001  (any failure: the layout is not kept)
            model.to(memory_format=torch.contiguous_format)
            return f"{type(err).__name__}: {err}"
        finally:
            model.train(was)
    _state_like_parameters(optimizers)
    return None


class ShrinkWhenFrozen(PruningControllerBase):
    """The PyTorch controller's side of ``shrink_when_frozen`` (mixed in before the base)."""

    supports_shrink_when_frozen = True
    shrunk = False
    _said_computed = _said_state = _said_ddp = False  # why the cut was skipped, said once

    def register_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """Have ``optimizer`` follow the model when it is cut (``shrink_when_frozen``).

        Raises:
            ConfigError: The model is cut already (a resumed run) and ``optimizer`` holds
                parameters it no longer has: it would train nothing.
        """
        if self.shrunk:
            replaced = getattr(self, "_replaced", {})
            if any(replaced.get(id(p), lambda: None)() is p
                   for g in optimizer.param_groups for p in g["params"]):  # fmt: skip
                raise ConfigError(
                    "The model was cut (shrink_when_frozen) before this optimizer was "
                    "registered, and the optimizer holds the parameters it had before: it "
                    "would train nothing. Create the optimizer after create_compressed_model, "
                    "from model.parameters(), then load its saved state."
                )
        self.__dict__.setdefault("optimizers", []).append(optimizer)

    def register_copy(self, copy: torch.nn.Module) -> None:
        """Have a copy of the model made after compression (an EMA's averaged model:
        ``AveragedModel(model).module``, timm's ``ModelEmaV3(model).module``) take the
        model's masks whenever they change, and be cut with it (``shrink_when_frozen``), so
        averaging goes on between tensors of one shape.

        Raises:
            ConfigError: ``copy`` does not have the model's masked layers.
        """
        if copy is self.model:
            raise ConfigError("register_copy: pass a copy of the model (an EMA's "
                              "`ema.module`), not the model itself, which is cut anyway.")
        names = {n for n, m in self.model.named_modules() if is_masked(m)}
        found = {n for n, m in copy.named_modules() if is_masked(m)}
        if not names <= found:
            raise ConfigError(
                f"register_copy: the {type(copy).__name__} given lacks the model's masked "
                f"layers (e.g. {sorted(names - found)[0]!r}). Pass a copy made after "
                "create_compressed_model, by its module: ctrl.register_copy(ema.module)."
            )
        if self.shrunk:
            raise ConfigError("register_copy: the model is cut already (shrink_when_frozen); "
                              "copy the cut model instead.")  # fmt: skip
        self.__dict__.setdefault("copies", []).append(weakref.ref(copy))

    def freeze(self, freeze: bool = True) -> None:
        if not freeze and self.shrunk:
            raise ConfigError("freeze(False): the model is cut (by shrink_when_frozen, or "
                              "strip(do_copy=False)), so its masks cannot change again.")
        cut = freeze and self.params.shrink_when_frozen and not self.shrunk and self._cuttable()
        if cut:
            self._refit_pending()  # on the masked model: a failure can put the masks back
        super().freeze(freeze)
        if cut:
            self._shrink()

    def _cuttable(self) -> bool:
        """Whether the cut keeps training what the masked model trains: not when nothing
        is pruned, nor under DDP, nor when a pruned layer computes its weight
        (spectral_norm, weight_norm, a parametrization), which the cut would write in as a
        plain weight (said once)."""
        if all(keep.all() for keep in self.plan.kept.values()):
            return False
        if self._ddp():  # DistributedDataParallel keeps the parameters it was given
            if not self._said_ddp:
                self._said_ddp = True
                log.warning(
                    "shrink_when_frozen: the model runs under DistributedDataParallel "
                    "(distributed() was called), whose wrapper keeps the parameters it was "
                    "built with: cut in place, their gradients would no longer be all-reduced "
                    "(or DDP fails in its next forward). The model stays masked; "
                    "ctrl.strip() cuts it for deployment.")  # fmt: skip
            return False
        computed = [n for n, m in self.model.named_modules()
                    if is_masked(m) and computed_weights(m)]  # fmt: skip
        if computed and not self._said_computed:
            self._said_computed = True
            names = ", ".join(computed[:3]) + (", ..." if len(computed) > 3 else "")
            verb = "computes its weight" if len(computed) == 1 else "compute their weights"
            log.warning(
                "shrink_when_frozen: %s %s (spectral_norm, weight_norm or a parametrization), "
                "which the cut would replace by plain weights, so training would go on "
                "without them. The model stays masked; ctrl.strip() cuts it for deployment.",
                names, verb)  # fmt: skip
        odd = self._uncuttable_state()
        if odd and not self._said_state:
            self._said_state = True
            log.warning("shrink_when_frozen: %s does not follow its parameter's shape, so it "
                        "cannot be cut with it. The model stays masked; ctrl.strip() cuts it "
                        "for deployment.", odd)  # fmt: skip
        return not computed and not odd

    def _uncuttable_state(self) -> str:
        """A registered optimizer's state of a parameter the cut replaces that is shaped
        otherwise than it (a factored second moment, as Adafactor keeps), or ''."""
        cut = {id(old) for _, _, old, *_ in _parameter_cuts(
            self.model, self.keeps(), self.analysis.graph.layers)}  # fmt: skip
        for optimizer in self.__dict__.get("optimizers", []):
            for param, state in optimizer.state.items():
                for key, value in state.items():
                    if id(param) in cut and torch.is_tensor(value) and value.dim() > 0 and (
                            value.shape != param.shape):  # fmt: skip
                        return (f"{type(optimizer).__name__}'s state {key!r} "
                                f"{tuple(value.shape)} of a {tuple(param.shape)} parameter")
        return ""

    def _shrink(self, resumed: bool = False) -> None:
        optimizers = self.__dict__.get("optimizers", [])
        if not optimizers and not resumed:  # (a resumed run registers its optimizer after)
            log.warning("shrink_when_frozen: no optimizer registered with ctrl."
                        "register_optimizer(); rebuild yours from model.parameters()")
        keeps, layers = self.keeps(), self.analysis.graph.layers
        replaced = shrink_in_place(self.model, keeps, layers, optimizers)
        cut_output_quantizers(self.model, self.kept_channels)
        for copy in filter(None, (ref() for ref in self.__dict__.get("copies", []))):
            shrink_in_place(copy, keeps, layers, [])
            cut_output_quantizers(copy, self.kept_channels)
        # what a stale optimizer would hold (by identity: tensors compare elementwise)
        self._replaced = {id(p): weakref.ref(p) for p in replaced}
        self.shrunk = True
        if getattr(self, "taylor", None) is not None:  # scores are of no use once cut
            self.taylor.remove()
        if self.params.shrunk_memory_format == "channels_last":
            failure = _to_channels_last(self.model, self.sample, optimizers)
            for copy in filter(None, (ref() for ref in self.__dict__.get("copies", []))):
                copy.to(memory_format=torch.contiguous_format if failure else
                        torch.channels_last)  # fmt: skip
            if failure:
                log.warning("shrunk_memory_format: the cut model's forward fails in the "
                            "channels_last layout, so it stays contiguous (%s)", failure)

    def set_pruning_level(self, level: float) -> None:
        if self.shrunk and abs(float(level) - self.pruning_level) < 1e-9:
            return  # the level the model was cut at
        if self.shrunk:
            raise ConfigError(
                "`level` cannot change once the model is cut (by shrink_when_frozen, or "
                "strip(do_copy=False)): the pruned channels are gone. Received: "
                f"level={float(level):.4g}."
            )
        super().set_pruning_level(level)

    def get_compression_state(self) -> dict[str, Any]:
        return {**super().get_compression_state(), "shrunk": self.shrunk}

    def load_state(self, state: dict[str, Any]) -> None:
        if self.shrunk:
            self._load_on_cut(state)
            return
        super().load_state(state)
        if isinstance(state, dict) and state.get("shrunk") and not self.shrunk:
            self._shrink(resumed=True)

    def _load_on_cut(self, state: dict[str, Any]) -> None:
        """A cut model keeps the channels it was cut to: it takes a state with those masks
        (its own, as a composite's rollback loads it) without masking its layers again."""
        plan = check_pruning_state(state, self.analysis, self.state_where,
                                   self.get_compression_state())  # fmt: skip
        if not (state.get("shrunk") and _same_kept(Plan.from_dict(plan, self.analysis).kept,
                                                   self.plan.kept)):  # fmt: skip
            raise ConfigError(
                f"`{self.state_where}` must hold the masks this model was cut to: "
                "shrink_when_frozen already removed the other channels. Load the state into "
                "a model that is not cut yet. Received: a state with other masks, or not cut."
            )
        self.scheduler.load_state(state["scheduler"])
        self.frozen = bool(state.get("frozen", False))
