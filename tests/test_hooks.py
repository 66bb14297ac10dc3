"""fu_fast.hooks.forward_hooks: every hook lives exactly as long as its with block."""

import pytest
import torch

from fu_fast.hooks import forward_hooks


def test_hooks_are_removed_after_the_block_even_when_it_raises():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU())
    seen = []
    with forward_hooks([(model[0], lambda m, i, o: seen.append("hook"))],
                       pre_hooks=[(model, lambda m, i: seen.append("pre"))]):
        model(torch.zeros(1, 3))
    assert seen == ["pre", "hook"]
    with pytest.raises(RuntimeError, match="boom"):
        with forward_hooks([(model[1], lambda m, i, o: seen.append("again"))]):
            raise RuntimeError("boom")
    model(torch.zeros(1, 3))
    assert seen == ["pre", "hook"] and not model[0]._forward_hooks and not model._forward_pre_hooks
    assert not model[1]._forward_hooks


def test_no_module_of_the_package_registers_a_hook_itself():
    """Every hook goes through forward_hooks, so none can outlive its pass (fu_fast and cli)."""
    from pathlib import Path

    import fu_fast

    root = Path(fu_fast.__file__).parent
    sources = [*root.rglob("*.py"), *(root.parent / "cli").rglob("*.py")]
    offenders = [str(path) for path in sources if path.name != "hooks.py"
                 and any(f".register_{kind}" in path.read_text() for kind in ("forward_hook", "forward_pre_hook",
                                                                               "full_backward_hook"))]
    assert sources and not offenders
