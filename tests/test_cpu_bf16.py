"""bf16 on a CPU with and without bf16 recurrent kernels (capsal.cpu_bf16): the capability answer is what really
happens, the fallback runs recurrent layers in float32 inside autocast, and on a CPU truly without the kernels
(oneDNN capped at AVX2, as on an AMD EPYC without AVX-512) explainers, training and evaluation run instead of
stopping in a oneDNN traceback."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from parity import check
from tiny import TINY_OVERRIDES, readme_captioner_class
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from capsal.cpu_bf16 import ENV, _probe, cpu_runs_bf16_recurrent, recurrent_layers_in_float32
from capsal.errors import UserError
from capsal.explainers import build_explainer

# oneDNN's own switch: the ISA it may use. At AVX2 it has no bf16 LSTM, as on a CPU without AVX512-BF16/AMX.
NO_BF16_KERNELS = {"ONEDNN_MAX_CPU_ISA": "AVX2"}
x86_only = pytest.mark.skipif(
    platform.machine().lower() not in ("x86_64", "amd64"), reason="ONEDNN_MAX_CPU_ISA=AVX2 caps x86 CPUs only"
)


def lstm_runs_under_cpu_bf16_autocast() -> bool:
    """What a user meets: a two-layer bidirectional LSTM (not the probe's shape) under CPU bf16 autocast."""
    lstm = nn.LSTM(16, 8, num_layers=2, bidirectional=True, batch_first=True)
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            lstm(torch.randn(3, 5, 16))
    except RuntimeError:
        return False
    return True


def test_the_answer_is_what_an_lstm_under_cpu_autocast_does_on_this_machine(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    assert cpu_runs_bf16_recurrent() == lstm_runs_under_cpu_bf16_autocast()


@x86_only
def test_a_cpu_without_the_kernels_is_answered_no_and_the_lstm_really_fails():
    code = (
        "import json; from capsal.cpu_bf16 import cpu_runs_bf16_recurrent; import test_cpu_bf16 as t; "
        "print(json.dumps([cpu_runs_bf16_recurrent(), t.lstm_runs_under_cpu_bf16_autocast()]))"
    )
    assert json.loads(_python(code).stdout) == [False, False]


@pytest.mark.parametrize(("value", "answer"), [("0", False), ("1", True), (" 0 ", False)])
def test_the_answer_can_be_forced(monkeypatch, value, answer):
    monkeypatch.setenv(ENV, value)
    assert cpu_runs_bf16_recurrent() is answer


def test_auto_asks_the_cpu(monkeypatch):
    monkeypatch.setenv(ENV, "auto")
    assert cpu_runs_bf16_recurrent() is _probe()


def test_a_wrong_setting_is_one_line(monkeypatch):
    monkeypatch.setenv(ENV, "no")
    with pytest.raises(UserError, match=f"{ENV}='no' is not 0, 1 or auto"):
        cpu_runs_bf16_recurrent()


class Tagger(nn.Module):
    """An LSTM, a GRU and an RNN between linear layers, as a user's own model might have them."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(6, 8)
        self.lstm = nn.LSTM(8, 8, batch_first=True)
        self.gru = nn.GRU(8, 8, batch_first=True)
        self.rnn = nn.RNN(8, 8, batch_first=True)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        x = self.embed(x)
        for layer in (self.lstm, self.gru, self.rnn):
            x = layer(x)[0]
        return self.head(x)


def output_dtypes(model: nn.Module, x: torch.Tensor) -> dict[str, torch.dtype]:
    """The dtype each child of ``model`` returns under CPU bf16 autocast."""
    dtypes = {}

    def record(name: str):
        def hook(module, inputs, output) -> None:  # output: (output, states) or a tensor
            dtypes[name] = output[0].dtype

        return hook

    hooks = [m.register_forward_hook(record(n)) for n, m in model.named_children()]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(x)
    for hook in hooks:
        hook.remove()
    return dtypes


def test_the_fallback_runs_recurrent_layers_in_float32_and_the_rest_in_bf16():
    torch.manual_seed(0)
    model, x = Tagger(), torch.randn(2, 5, 6)
    reference = model(x)
    with recurrent_layers_in_float32(model):
        dtypes = output_dtypes(model, x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = model(x)
    assert dtypes == {
        "embed": torch.bfloat16,
        "lstm": torch.float32,
        "gru": torch.float32,
        "rnn": torch.float32,
        "head": torch.bfloat16,
    }
    assert torch.allclose(mixed.float(), reference, atol=0.05)
    assert all("forward" not in vars(m) for m in model.modules())  # the model is as it was after the context


def test_the_fallback_takes_packed_sequences_and_initial_states():
    lstm = nn.LSTM(4, 6)
    packed = pack_padded_sequence(torch.randn(5, 2, 4, dtype=torch.bfloat16), [5, 3])
    states = (torch.zeros(1, 2, 6, dtype=torch.bfloat16), torch.zeros(1, 2, 6, dtype=torch.bfloat16))
    with recurrent_layers_in_float32(lstm), torch.autocast("cpu", dtype=torch.bfloat16):
        output, (h, c) = lstm(packed, states)
    assert output.data.dtype == h.dtype == c.dtype == torch.float32


def test_an_outer_fallback_is_left_in_place_by_an_inner_one():
    model = Tagger()
    with recurrent_layers_in_float32(model):
        with recurrent_layers_in_float32(model):
            pass
        assert output_dtypes(model, torch.randn(1, 2, 6))["lstm"] == torch.float32


@pytest.mark.parametrize("name", ["caption_guided", "gradient"])
def test_a_users_own_gru_captioner_is_explained_in_bf16_without_the_kernels(monkeypatch, name):
    monkeypatch.setenv(ENV, "0")
    torch.manual_seed(0)
    model = readme_captioner_class()(["a", "red", "circle", "square"]).eval()
    items = torch.randn(2, 9, 16)
    seen = []
    model.decoder.register_forward_hook(lambda m, i, o: seen.append(o[0].dtype))
    full = build_explainer(name).explain(model, items, tokens="a red circle")
    mixed = build_explainer(name, precision="bf16-mixed").explain(model, items, tokens="a red circle")
    assert set(seen) == {torch.float32}  # the GRU ran in float32 in both calls
    assert torch.allclose(full.scores, mixed.scores, rtol=0.05, atol=0.05)


# -- a CPU truly without the kernels: oneDNN capped at AVX2, in a fresh process -----------------------------------


def _without_kernels() -> dict[str, str]:
    """This process's environment with oneDNN capped at AVX2 and capsal left to ask the CPU."""
    env = {**os.environ, **NO_BF16_KERNELS}
    env.pop(ENV, None)
    return env


def _python(code: str, *, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = _without_kernels()
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(Path(__file__).parent), env.get("PYTHONPATH")) if p)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=cwd, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@x86_only
@pytest.mark.slow
def test_without_the_kernels_bf16_maps_match_float32(image_checkpoint):
    code = (
        "import json, parity; from capsal.checkpoints import checkpoint_datamodule, load_captioner; "
        f"m = load_captioner({str(image_checkpoint)!r}); "
        "print(json.dumps({n: parity.compare(m, checkpoint_datamodule(m), n) for n in ('caption_guided', 'gradient')}))"
    )
    results = json.loads(_python(code).stdout.strip().splitlines()[-1])
    for name, result in results.items():
        check(result, name)


@x86_only
@pytest.mark.slow
@pytest.mark.parametrize("app", ["train", "eval"])
def test_without_the_kernels_bf16_training_and_evaluation_run(tmp_path, image_checkpoint, app):
    if app == "train":
        args = ["capsal.cli.train", *TINY_OVERRIDES, "trainer.precision=bf16-mixed", f"hydra.run.dir={tmp_path}"]
    else:
        args = [
            "capsal.cli.evaluate",
            f"ckpt_path={image_checkpoint}",
            "trainer.precision=bf16-mixed",
            "explainers=[caption_guided]",
            "caption_metrics=[]",
            "progress=false",
            f"hydra.run.dir={tmp_path}",
        ]
    done = subprocess.run(
        [sys.executable, "-m", *args], capture_output=True, text=True, env=_without_kernels(), cwd=tmp_path, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stdout + done.stderr
    said = "this CPU has no bf16 recurrent kernels: the 2 recurrent layer(s) of S2VT run in float32 under bf16-mixed"
    assert said in done.stdout + done.stderr
