"""Hydra multirun: every job in its own directory; a failing job is recorded and does not stop the others; the
sweep table, train.log and TensorBoard hparams of each job."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import TINY
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

ROOT = Path(__file__).resolve().parents[1]


def test_a_failing_job_does_not_lose_the_other_jobs_outputs(tmp_path):
    # The sweep is `objective=synthetic algorithm=meal,ric seed=1,2`; algorithm=ric is not in this
    # branch, so the algorithm axis is the lookahead, with an invalid value that fails the first two jobs.
    sweep = tmp_path / "sweep"
    micro = [o for o in TINY if not o.startswith("trainer.max_steps")] + [
        "trainer.max_steps=1",
        "warm_start.steps=0",
        "callbacks.pareto_eval.num_prompts=2",
        "threads=1",  # one torch thread per process: the cores are shared with other processes
    ]
    cmd = [sys.executable, "-m", "meal_pl.train", "-m", "objective=synthetic", "algorithm.meta.lookahead=bogus,alternating",
           "seed=1,2", *micro, f"hydra.sweep.dir={sweep}"]
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, timeout=600)

    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: 2 multirun job(s) failed, the others completed")
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1", "2", "3"]
    for job in ("0", "1"):  # lookahead=bogus
        error = (sweep / job / "error.txt").read_text()
        assert error.startswith(f"error: multirun job {job} ") and "algorithm.meta.lookahead='bogus'" in error
        assert not (sweep / job / "pareto.json").exists()
    for job, seed in (("2", 1), ("3", 2)):  # lookahead=alternating ran to the end after the failures
        assert (sweep / job / "pareto.json").is_file() and not (sweep / job / "error.txt").exists()
        assert torch.load(sweep / job / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 1
        assert f"seed={seed}" in (sweep / job / ".hydra" / "overrides.yaml").read_text()
    assert len((sweep / "failed_jobs.txt").read_text().splitlines()) == 2

    # The sweep table: one row per job, the failures with their line, the finished jobs with their front.
    rows = json.loads((sweep / "sweep_summary.json").read_text())
    assert [r["job"] for r in rows] == ["0", "1", "2", "3"]
    assert all(r["status"].startswith("failed: ") and "bogus" in r["status"] for r in rows[:2])
    for row, seed in zip(rows[2:], (1, 2)):
        pareto = json.loads((sweep / row["job"] / "pareto.json").read_text())
        assert row["status"] == "completed" and row["hypervolume"] == pareto["hypervolume"] and row["seconds"] > 0
        assert f"seed={seed}" in row["overrides"] and len(row["pwn_weights"]) == 2 and set(row["steerability"]) == {"a_to_m", "n_to_z"}
    table = (sweep / "sweep_summary.md").read_text()
    assert table.count("\n| ") == 5 and "algorithm.meta.lookahead=alternating seed=2" in table  # header + 4 rows
    assert f"sweep summary (4 jobs): {sweep / 'sweep_summary'}.md" in proc.stdout

    # train.log: the config summary first, the run summary last; no advertisement on the console.
    log = (sweep / "3" / "train.log").read_text().splitlines()
    assert "run directory: " in log[0] and "[meal_pl.file.progress][INFO] - step 1/1" in "".join(log)
    assert log[-1].endswith(f"outputs                     {sweep / '3'}") and "meal-pl run finished" in "".join(log[-16:])  # the summary, prompt groups included
    assert "error: multirun job 0" in (sweep / "0" / "train.log").read_text().splitlines()[-1]
    assert "💡" not in proc.stdout + proc.stderr and "litlogger" not in proc.stdout + proc.stderr

    # TensorBoard hparams: the whole resolved config, flattened, with the final hypervolume as the metric.
    accumulator = EventAccumulator(str(sweep / "3" / "tensorboard"))
    accumulator.Reload()
    content = accumulator.PluginTagToContent("hparams")
    start = HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    experiment = HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert start.hparams["seed"].number_value == 2 and start.hparams["algorithm.meta.lookahead"].string_value == "alternating"
    assert {"model.hidden_size", "data.batch_size", "objective.name"} <= set(start.hparams)
    assert [m.name.tag for m in experiment.metric_infos] == ["hp/final_hypervolume", "hp/final_hypervolume_ratio"]
    assert accumulator.Scalars("hp/final_hypervolume")[-1].value == pytest.approx(rows[3]["hypervolume"])
