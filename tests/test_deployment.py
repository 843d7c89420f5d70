"""fedprune on Flower's deployment engine: a real SuperLink and SuperNodes as processes on loopback.

The commands are the ones docs/DEPLOYMENT.md gives (`flower-superlink`, `flower-supernode
--node-config "partition-id=.. num-partitions=.."`, `flwr supernode register`, `flwr run .
CONNECTION --stream`), with free ports and a private FLWR_HOME. Each run is two rounds on two
SuperNodes: one randomized-response mask report per client in round 1, fine-tuning in round 2.
The ServerApp itself waits until both SuperNodes are online, so the run starts right away.
"""

import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import httpx
import pytest
from deploy_helpers import EXECUTABLES, REPO, Deployment, descendants, free_port, make_node_key
from implemented_rr import rr_exact

from fedprune import run_folder

pytestmark = pytest.mark.slow

MISSING = [name for name in EXECUTABLES if shutil.which(name) is None]
if MISSING:
    pytest.skip(f"Flower's executables {MISSING} are not on PATH (pip install 'flwr>=1.41,<1.42')",
                allow_module_level=True)

SHORT_RUN = ("num-server-rounds=2 num-clients=2 min-replies=2 dataset='digits' model='mlp' local-epochs=3 "
             "batch-size=64 schedule='oneshot' prune-start=1 prune-end=1 target-sparsity=0.7 "
             "epsilon-per-decision=2.0 privacy-seed=5")


@pytest.fixture
def deployment_factory(tmp_path):
    """Deployments torn down (whole process trees killed) even when the test fails."""
    made = []

    def make(**options) -> Deployment:
        made.append(Deployment(tmp_path, **options))
        return made[-1]

    yield make
    survivors = {pid for deployment in made for pid in deployment.close()}
    assert not survivors, f"processes survived the teardown: {sorted(survivors)}"


def run_short(deployment: Deployment, run_config: str) -> dict:
    """`flwr run . deployment --stream` and the run's record from `flwr ls`."""
    deployment.flwr("run", ".", "deployment", "--stream", "--run-config", run_config)
    runs = deployment.flwr_json("ls", "deployment")["runs"]
    assert len(runs) == 1
    return runs[0]


def check_results(folder) -> dict:
    """The run folder holds every result and a pruned, trained model with privacy figures."""
    assert {run_folder.CONFIG, run_folder.METRICS, run_folder.SUMMARY, run_folder.REPORT, run_folder.CHECKPOINT} <= \
           {path.name for path in folder.iterdir()}
    summary = json.loads((folder / run_folder.SUMMARY).read_text())
    lines = [json.loads(line) for line in (folder / run_folder.METRICS).read_text().splitlines()]
    assert [line["round"] for line in lines] == [0, 1, 2]
    assert lines[0]["density"] == 1.0 and lines[1]["density"] == pytest.approx(0.3, abs=1e-3)
    assert summary["rounds"] == 2 and summary["clients"] == 2 and summary["stopped"] is None
    assert summary["density"] == pytest.approx(0.3, abs=1e-3)
    # trained, not chance: 0.1 + 6 sd of Binomial(360, 0.1) / 360 is 0.2 (false failure below 1e-9)
    assert summary["final_accuracy"] > 0.2
    # weights in the clear: no end-to-end figure; the mask channel: one report per client at eps 2 a bit
    assert summary["epsilon"] == {"record": None, "client": None}
    assert summary["mechanism"]["mechanism"] == "randomized-response"
    exact = rr_exact(2.0, summary["mechanism"]["hamming_bound"], summary["delta"])
    assert exact - 1e-9 <= summary["mask_channel_epsilon"]["client"] <= exact * (1 + 1e-5) + 2e-4
    assert summary["rejected_replies"] == 0
    return summary


def test_server_and_two_supernodes_run_a_pruning_job(deployment_factory, tmp_path):
    deployment = deployment_factory()
    deployment.start_superlink()
    for partition in (0, 1):
        deployment.start_supernode(f"node{partition}", partition, 2)

    out = tmp_path / "results"
    run = run_short(deployment, f"{SHORT_RUN} output-dir='{out}' run-name='plain'")
    assert run["status"] == "finished:completed", run
    check_results(out / "plain")


def test_tls_and_supernode_authentication_refuse_an_unregistered_node(deployment_factory, tmp_path):
    deployment = deployment_factory(tls=True, supernode_auth=True)
    deployment.start_superlink()
    with pytest.raises(httpx.HTTPError):  # TLS only: a plain-HTTP client gets no answer
        httpx.get(f"http://{deployment.address}/health", timeout=2.0)

    keys = {name: make_node_key(tmp_path / "keys", name) for name in ("node0", "node1", "intruder")}
    registered = {str(deployment.flwr_json("supernode", "register", str(keys[name][1]), "deployment")["node-id"])
                  for name in ("node0", "node1")}
    deployment.start_supernode("node0", 0, 2, keys["node0"][0])
    deployment.start_supernode("node1", 1, 2, keys["node1"][0])
    intruder = deployment.start_supernode("intruder", 0, 2, keys["intruder"][0])

    # no output-dir: the ServerApp writes runs/ under the SuperLink's working directory
    run = run_short(deployment, f"{SHORT_RUN} run-name='tls'")
    assert run["status"] == "finished:completed", run
    check_results(deployment.folder / "runs" / "tls")

    # the unregistered SuperNode was refused: it never got a node id and exited with an error
    try:
        intruder.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the unregistered SuperNode is still running:\n{deployment.log('intruder')}")
    assert intruder.returncode != 0
    assert "Failed to activate SuperNode" in deployment.log("intruder")
    assert "SuperNode ID" not in deployment.log("intruder")
    nodes = deployment.supernodes()
    assert {node["node-id"] for node in nodes} == registered
    assert all(node["status"] == "online" for node in nodes), nodes


def test_flwr_run_dot_on_the_local_simulation_runs_with_the_nodes_it_has(tmp_path):
    # `flwr run .` as the README gives it: Flower 1.41 starts a local SuperLink whose simulation has 2 SuperNodes;
    # the run asks for 10 (pyproject's num-clients) and must still finish, on 2, saying so.
    home = tmp_path / "flwr-home"
    env = dict(os.environ, FLWR_HOME=str(home), FLWR_TELEMETRY_ENABLED="0", FLWR_DISABLE_UPDATE_CHECK="1",
               FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1", FLWR_LOCAL_SUPERLINK_HTTP_API_PORT=str(free_port()),
               FLWR_LOCAL_CONTROL_API_PORT=str(free_port()), FEDPRUNE_CACHE=str(tmp_path / "cache"),
               HF_DATASETS_OFFLINE="1", NO_COLOR="1", COLUMNS="200")
    out = tmp_path / "runs"
    overrides = (f"num-server-rounds=2 dataset='digits' model='mlp' local-epochs=2 batch-size=64 schedule='oneshot' "
                 f"prune-start=1 prune-end=1 target-sparsity=0.5 output-dir='{out}' run-name='local'")
    try:
        done = subprocess.run(["flwr", "run", ".", "--stream", "--run-config", overrides], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=400)
    finally:
        _kill_local_superlink(home)
    assert done.returncode == 0, done.stdout + done.stderr
    summary = json.loads((out / "local" / run_folder.SUMMARY).read_text())
    assert summary["rounds"] == 2 and summary["clients"] == 2 and summary["density"] == pytest.approx(0.5, abs=1e-3)
    assert "the federation has 2 SuperNodes, fewer than num-clients = 10: running with num-clients = 2" in done.stdout
    assert [p.name for p in out.iterdir()] == ["local"]  # no stray run folder


def _kill_local_superlink(home) -> None:
    """The local SuperLink `flwr run` detached (it logs under ``home``), with everything below it."""
    roots = [int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit()
             and str(home) in _cmdline(int(entry.name))]
    for pid in descendants(roots):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""
