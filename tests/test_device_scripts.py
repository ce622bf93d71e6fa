"""The shell scripts around a GPU lease refuse what would lose work, each with a one-line reason."""
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_script(script: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(ROOT / "scripts" / script), *args], capture_output=True, text=True,
                          timeout=60, env=env)


def test_device_stage_refuses_an_out_folder_that_already_holds_the_stage(tmp_path):
    (tmp_path / "stage12-gpu.log").write_text("an earlier stage's log\n")
    result = run_script("device_stage.sh", "stage12-gpu", "--steps", "1",
                        env={"OUT": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 2
    assert result.stderr.strip() == f"device_stage: {tmp_path} already holds stage12-gpu.log: name this stage otherwise"
    assert (tmp_path / "stage12-gpu.log").read_text() == "an earlier stage's log\n"   # nothing overwritten
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stage12-gpu.log"]


def test_device_stage_lets_a_stage_whose_name_is_a_prefix_of_another_through_that_check(tmp_path):
    (tmp_path / "stage12-gpu.log").write_text("")
    result = run_script("device_stage.sh", "stage1", env={"OUT": str(tmp_path), "PATH": "/usr/bin:/bin",
                                                          "PYTHON": "/bin/false", "DEVICE": "cpu"})
    assert result.returncode != 0 and "already holds" not in result.stderr  # it stops later: no .gpu packs, or no Python


def test_ship_base_refuses_a_checkpoint_that_does_not_exist(tmp_path):
    before = (ROOT / "models" / "base.pt").read_bytes()
    result = run_script("ship_base.sh", str(tmp_path / "missing.pt"))
    assert result.returncode == 2
    assert result.stderr.strip() == f"ship_base: {tmp_path / 'missing.pt'}: no such checkpoint"
    assert (ROOT / "models" / "base.pt").read_bytes() == before
