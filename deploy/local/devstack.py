"""The local stack: real etcd, MariaDB, Kafka (KRaft) and NSQ on 127.0.0.1, no containers.

Each service moves through these states:

    missing --install--> installed --start--> running --health check--> healthy
       running --stop (SIGTERM, then SIGKILL after a grace period)--> installed

* install: Debian packages (etcd, MariaDB), Maven Central jars (Kafka, via the pom
  beside this file), Go modules (nsqd, nsqlookupd, via the go.mod beside this file).
  Downloads are cached (`~/.cache/shardctl` by default) so a second `up` is fast.
* running: a process this stack started, recorded in `<state>/<service>.pid`.
  A pid file whose process is gone, or is some other program, is stale and ignored.
  `down` stops only processes named by pid files, never anything found by name.
* healthy: one real request answers (etcd /health, a MariaDB query, Kafka
  metadata, NSQ /ping). Never a sleep.

`up` is idempotent: a healthy service is left alone. With no names it starts the
five services above; the optional ones (`mariadb2`, a second source with the same
binlog settings and CDC user; `mariadb_sink`, a server of its own for sinks) start
only when named: `up(["mariadb2"])`, `shardctl dev up mariadb2`.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import getpass
import json
import os
import secrets
import shutil
import signal
import ssl
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
KAFKA_VERSION = "4.1.1"
NSQ_VERSION = "1.3.0"
SERVICES = ("etcd", "mariadb", "kafka", "nsqlookupd", "nsqd")
# Started only when named (`shardctl dev up mariadb2`): a second source server, and a
# sink server that tests can stop without touching the source; PostgreSQL for its sink.
OPTIONAL_SERVICES = ("mariadb2", "mariadb_sink", "postgres")
ALL_SERVICES = SERVICES + OPTIONAL_SERVICES
# Each MariaDB: its port field in Ports, and its server_id. Same binlog settings and
# the same GTID domain: two sources that only their identity tells apart.
MARIADB_SERVERS = {"mariadb": 1, "mariadb2": 2, "mariadb_sink": 3}
CDC_USER = "shardctl_cdc"
SBIN_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin", "/sbin"])


class StackError(Exception):
    """A service could not be installed, started or reached. The message names it."""


@dataclass
class Ports:
    """Defaults sit away from the standard ports (another etcd or MariaDB may be
    running) and below Linux's ephemeral range (32768-60999 by default): a port in it
    can be the local end of any outgoing connection at the moment a service starts,
    and the service then fails with "Address already in use" (a suite run saw
    MariaDB's old default, 33308 for the sink server, taken that way)."""

    etcd: int = 23790
    etcd_peer: int = 23800
    mariadb: int = 13306
    kafka: int = 19092
    kafka_controller: int = 19093
    nsqd_tcp: int = 14150
    nsqd_http: int = 14151
    lookupd_tcp: int = 14160
    lookupd_http: int = 14161
    # 0: the MariaDB port + 1 (+ 2), so a stack whose ports moved keeps them together.
    mariadb2: int = 0
    mariadb_sink: int = 0

    def __post_init__(self) -> None:
        if not self.mariadb2:
            self.mariadb2 = self.mariadb + 1
        if not self.mariadb_sink:
            self.mariadb_sink = self.mariadb + 2

    postgres: int = 15432

    @classmethod
    def from_env(cls) -> Ports:
        """Each port can be moved with SHARDCTL_DEV_<NAME>_PORT, e.g. SHARDCTL_DEV_KAFKA_PORT."""
        moved: dict[str, int] = {}
        for name in asdict(cls()):
            raw = os.environ.get(f"SHARDCTL_DEV_{name.upper()}_PORT")
            if raw is not None:
                if not raw.isdigit() or not 0 < int(raw) < 65536:
                    raise StackError(f"SHARDCTL_DEV_{name.upper()}_PORT: {raw!r} is not a port")
                moved[name] = int(raw)
        return cls(**moved)


@dataclass
class Service:
    name: str
    binary: str  # the program name that must appear in the process's argv[0]
    install: Callable[[], None]
    prepare: Callable[[], None]
    command: Callable[[], list[str]]
    healthy: Callable[[], bool]
    after_start: Callable[[], None] = field(default=lambda: None)
    start_timeout_s: float = 90.0


def default_state_dir() -> Path:
    return Path(os.environ.get("SHARDCTL_DEV_STATE", REPO / ".shardctl")).resolve()


def default_cache_dir() -> Path:
    if "SHARDCTL_DEV_CACHE" in os.environ:
        return Path(os.environ["SHARDCTL_DEV_CACHE"]).resolve()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "shardctl"


def _http_ok(
    url: str, expect: Callable[[bytes], bool], context: ssl.SSLContext | None = None
) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2, context=context) as resp:
            return bool(resp.status == 200 and expect(resp.read()))
    except (urllib.error.URLError, OSError, ValueError):
        return False


@dataclass(frozen=True)
class Certificates:
    """A throwaway CA with a server certificate for 127.0.0.1/localhost and a client
    certificate, for private stacks that test the TLS settings. Made with `openssl`."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path

    @classmethod
    def generate(cls, folder: Path, client_name: str = "shardctl-client") -> Certificates:
        folder.mkdir(parents=True, exist_ok=True)
        openssl = shutil.which("openssl")
        if openssl is None:
            raise StackError("openssl: not found; it makes the test certificates")
        certs = cls(
            *(
                folder / n
                for n in ("ca.pem", "server.pem", "server.key", "client.pem", "client.key")
            )
        )
        ca_key = folder / "ca.key"
        _run(
            [
                openssl,
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=shardctl test CA",
                "-keyout",
                str(ca_key),
                "-out",
                str(certs.ca),
            ],
            "openssl: making the test CA",
        )
        for cert, key, name, usage, alt in (
            (
                certs.server_cert,
                certs.server_key,
                "127.0.0.1",
                "serverAuth,clientAuth",
                "IP:127.0.0.1,DNS:localhost",
            ),
            (certs.client_cert, certs.client_key, client_name, "clientAuth", None),
        ):
            request = cert.with_suffix(".csr")
            _run(
                [
                    openssl,
                    "req",
                    "-new",
                    "-newkey",
                    "rsa:2048",
                    "-nodes",
                    "-subj",
                    f"/CN={name}",
                    "-keyout",
                    str(key),
                    "-out",
                    str(request),
                ],
                f"openssl: making the key of {cert.name}",
            )
            extensions = cert.with_suffix(".ext")
            extensions.write_text(
                f"extendedKeyUsage={usage}\n" + (f"subjectAltName={alt}\n" if alt else "")
            )
            _run(
                [
                    openssl,
                    "x509",
                    "-req",
                    "-in",
                    str(request),
                    "-CA",
                    str(certs.ca),
                    "-CAkey",
                    str(ca_key),
                    "-CAcreateserial",
                    "-days",
                    "2",
                    "-extfile",
                    str(extensions),
                    "-out",
                    str(cert),
                ],
                f"openssl: signing {cert.name}",
            )
            key.chmod(0o600)
        return certs

    def client_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca))
        context.load_cert_chain(str(self.client_cert), str(self.client_key))
        return context


def _run(
    cmd: list[str], what: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> None:
    """Run an install/setup step; on failure say which step and show its output's tail."""
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd, check=False)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-20:])
        raise StackError(f"{what} failed (exit {proc.returncode}): {' '.join(cmd)}\n{tail}")


class Stack:
    def __init__(
        self,
        state_dir: Path | None = None,
        cache_dir: Path | None = None,
        ports: Ports | None = None,
        tls: Certificates | None = None,
    ) -> None:
        # tls: serve etcd (client certificates required) and MariaDB over TLS. Only
        # private stacks of the security tests use it; the shared stack is plaintext.
        self.tls = tls
        self.state = state_dir or default_state_dir()
        self.cache = cache_dir or default_cache_dir()
        saved = self.state / "ports.json"
        if ports is None and saved.exists():
            # A port added since the file was written takes its default or env value.
            ports = Ports(**{**asdict(Ports.from_env()), **json.loads(saved.read_text())})
        self.ports = ports or Ports.from_env()
        self._apt_updated = False
        self.services: dict[str, Service] = {
            "etcd": Service(
                "etcd",
                "etcd",
                self._install_etcd,
                self._prepare_etcd,
                self._etcd_cmd,
                self._etcd_healthy,
            ),
            **{
                name: Service(
                    name,
                    "mariadbd",
                    self._install_mariadb,
                    functools.partial(self._prepare_mariadb, name),
                    functools.partial(self._mariadb_cmd, name),
                    functools.partial(self._mariadb_healthy, name),
                    functools.partial(self._mariadb_users, name),
                )
                for name in MARIADB_SERVERS
            },
            "kafka": Service(
                "kafka",
                "java",
                self._install_kafka,
                self._prepare_kafka,
                self._kafka_cmd,
                self._kafka_healthy,
                start_timeout_s=120.0,
            ),
            "nsqlookupd": Service(
                "nsqlookupd",
                "nsqlookupd",
                self._install_nsq,
                lambda: None,
                self._lookupd_cmd,
                self._lookupd_healthy,
            ),
            "nsqd": Service(
                "nsqd",
                "nsqd",
                self._install_nsq,
                self._prepare_nsqd,
                self._nsqd_cmd,
                self._nsqd_healthy,
            ),
        }
        self.services["postgres"] = Postgres(self).service()

    # ------------------------------------------------------------------ paths
    def data(self, name: str) -> Path:
        return self.state / "data" / name

    def log(self, name: str) -> Path:
        return self.state / "logs" / f"{name}.log"

    def pidfile(self, name: str) -> Path:
        return self.state / "run" / f"{name}.pid"

    @property
    def cdc_password_file(self) -> Path:
        return self.state / "secrets" / "mysql_cdc_password"

    @property
    def mariadb_socket(self) -> Path:
        return self.socket_of("mariadb")

    def socket_of(self, mariadb: str) -> Path:
        return self.state / "run" / f"{mariadb}.sock"

    def mariadb_port(self, mariadb: str) -> int:
        """The TCP port of one of the MARIADB_SERVERS."""
        return int(getattr(self.ports, mariadb))

    # --------------------------------------------------------------- installs
    def _apt_install(self, packages: list[str]) -> None:
        if os.geteuid() != 0:
            raise StackError(
                f"{', '.join(packages)} missing; install them with: "
                f"sudo apt-get install -y {' '.join(packages)}"
            )
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        if not self._apt_updated:
            _run(["apt-get", "update", "-qq"], "apt-get update", env=env)
            self._apt_updated = True
        _run(
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages],
            f"apt-get install {' '.join(packages)}",
            env=env,
        )

    def _install_etcd(self) -> None:
        if not shutil.which("etcd", path=SBIN_PATH):
            self._apt_install(["etcd-server"])

    def _install_mariadb(self) -> None:
        if not (shutil.which("mariadbd", path=SBIN_PATH) and shutil.which("mariadb-install-db")):
            self._apt_install(["mariadb-server", "mariadb-client"])

    @property
    def kafka_libs(self) -> Path:
        return self.cache / f"kafka-{KAFKA_VERSION}" / "libs"

    def _install_kafka(self) -> None:
        done = self.kafka_libs / ".complete"
        if done.exists():
            return
        for tool in ("java", "mvn"):
            if not shutil.which(tool):
                raise StackError(f"kafka: `{tool}` is not installed; Kafka needs Java 17 and Maven")
        self.kafka_libs.mkdir(parents=True, exist_ok=True)
        _run(
            [
                "mvn",
                "-q",
                "-B",
                "-f",
                str(HERE / "kafka-jars" / "pom.xml"),
                "dependency:copy-dependencies",
                f"-DoutputDirectory={self.kafka_libs}",
            ],
            f"kafka {KAFKA_VERSION}: resolving jars with mvn",
        )
        done.write_text(KAFKA_VERSION)

    @property
    def nsq_bin(self) -> Path:
        return self.cache / f"nsq-{NSQ_VERSION}" / "bin"

    def _install_nsq(self) -> None:
        if (self.nsq_bin / "nsqd").exists() and (self.nsq_bin / "nsqlookupd").exists():
            return
        if not shutil.which("go"):
            raise StackError("nsqd: `go` is not installed; nsqd is built from its Go module")
        env = {**os.environ, "GOBIN": str(self.nsq_bin), "GOFLAGS": "-mod=mod"}
        _run(
            [
                "go",
                "install",
                "github.com/nsqio/nsq/apps/nsqd",
                "github.com/nsqio/nsq/apps/nsqlookupd",
            ],
            f"nsq {NSQ_VERSION}: go install",
            env=env,
            cwd=HERE / "nsq-binaries",
        )

    # ------------------------------------------------------------------ etcd
    def _prepare_etcd(self) -> None:
        self.data("etcd").mkdir(parents=True, exist_ok=True)

    @property
    def etcd_url(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self.ports.etcd}"

    def _etcd_tls_args(self) -> list[str]:
        if self.tls is None:
            return []
        return [
            f"--cert-file={self.tls.server_cert}",
            f"--key-file={self.tls.server_key}",
            f"--trusted-ca-file={self.tls.ca}",
            "--client-cert-auth",
        ]

    def _etcd_cmd(self) -> list[str]:
        p = self.ports
        peer = f"http://127.0.0.1:{p.etcd_peer}"
        client = self.etcd_url
        return [
            shutil.which("etcd", path=SBIN_PATH) or "etcd",
            "--name",
            "shardctl-dev",
            "--data-dir",
            str(self.data("etcd")),
            "--listen-client-urls",
            client,
            "--advertise-client-urls",
            client,
            "--listen-peer-urls",
            peer,
            "--initial-advertise-peer-urls",
            peer,
            "--initial-cluster",
            f"shardctl-dev={peer}",
            "--logger",
            "zap",
            "--log-outputs",
            "stderr",
            *self._etcd_tls_args(),
        ]

    def _etcd_healthy(self) -> bool:
        return _http_ok(
            f"{self.etcd_url}/health",
            lambda body: json.loads(body).get("health") == "true",
            self.tls.client_context() if self.tls else None,
        )

    def etcd_enable_auth(self, user: str, password: str, root_password: str, prefix: str) -> None:
        """Turn on etcd auth with `root` and `user`, who may read and write only under
        `prefix`. Through etcd's JSON gateway, so no etcdctl is needed."""
        key = base64.b64encode(prefix.encode()).decode()
        end = bytearray(prefix.encode())
        end[-1] += 1  # the end of the prefix range, as etcd's clients compute it
        steps: list[tuple[str, dict[str, object]]] = [
            ("user/add", {"name": "root", "password": root_password}),
            ("user/grant", {"user": "root", "role": "root"}),
            ("role/add", {"name": user}),
            (
                "role/grant",
                {
                    "name": user,
                    "perm": {
                        "permType": "READWRITE",
                        "key": key,
                        "range_end": base64.b64encode(bytes(end)).decode(),
                    },
                },
            ),
            ("user/add", {"name": user, "password": password}),
            ("user/grant", {"user": user, "role": user}),
            ("enable", {}),
        ]
        context = self.tls.client_context() if self.tls else None
        for path, body in steps:
            request = urllib.request.Request(
                f"{self.etcd_url}/v3/auth/{path}",
                data=json.dumps(body).encode(),
                headers={"Content-Type": "application/json"},
            )
            try:
                with urllib.request.urlopen(request, timeout=5, context=context) as resp:
                    resp.read()
            except urllib.error.HTTPError as exc:
                detail = exc.read().decode(errors="replace")[:300]
                raise StackError(f"etcd auth {path}: HTTP {exc.code}: {detail}") from exc

    # --------------------------------------------------------------- MariaDB
    def _prepare_mariadb(self, name: str = "mariadb") -> None:
        datadir = self.data(name)
        if (datadir / "mysql").is_dir():
            return
        datadir.mkdir(parents=True, exist_ok=True)
        _run(
            [
                "mariadb-install-db",
                "--no-defaults",
                f"--datadir={datadir}",
                f"--user={getpass.getuser()}",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
            ],
            "mariadb: initialising the data directory",
        )

    def _mariadb_cmd(self, name: str = "mariadb") -> list[str]:
        d = self.data(name)
        internal_pid = "mariadbd" if name == "mariadb" else name
        return [
            shutil.which("mariadbd", path=SBIN_PATH) or "mariadbd",
            "--no-defaults",
            f"--datadir={d}",
            f"--socket={self.socket_of(name)}",
            f"--port={self.mariadb_port(name)}",
            "--bind-address=127.0.0.1",
            f"--user={getpass.getuser()}",
            "--skip-name-resolve",
            f"--pid-file={self.state / 'run' / f'{internal_pid}.internal.pid'}",
            f"--server-id={MARIADB_SERVERS[name]}",
            f"--log-bin={d / 'binlog'}",
            "--binlog-format=ROW",
            "--binlog-row-image=FULL",
            "--binlog-row-metadata=FULL",
            "--gtid-strict-mode=1",
            "--gtid-domain-id=0",
            "--character-set-server=utf8mb4",
            "--collation-server=utf8mb4_unicode_ci",
            "--max-allowed-packet=64M",
            "--innodb-buffer-pool-size=512M",
            "--max-connections=500",
            *(
                [
                    f"--ssl-ca={self.tls.ca}",
                    f"--ssl-cert={self.tls.server_cert}",
                    f"--ssl-key={self.tls.server_key}",
                ]
                if self.tls
                else []
            ),
        ]

    def _mariadb_query(self, sql: str, via_socket: bool = False, name: str = "mariadb") -> None:
        import pymysql

        if via_socket:
            conn = pymysql.connect(
                unix_socket=str(self.socket_of(name)),
                user="root",
                password="",
                connect_timeout=2,
                autocommit=True,
            )
        else:
            conn = pymysql.connect(
                host="127.0.0.1",
                port=self.mariadb_port(name),
                user="root",
                password="",
                connect_timeout=2,
                autocommit=True,
            )
        try:
            with conn.cursor() as cur:
                for stmt in filter(None, (s.strip() for s in sql.split(";"))):
                    cur.execute(stmt)
        finally:
            conn.close()

    def _mariadb_healthy(self, name: str = "mariadb") -> bool:
        import pymysql

        try:
            self._mariadb_query("SELECT 1", via_socket=True, name=name)
        except (pymysql.MySQLError, OSError):
            return False
        return True

    def _mariadb_users(self, name: str = "mariadb") -> None:
        """Root over TCP for tests, and a CDC user with only what a binlog reader needs
        (the same user and password on every MariaDB of the stack)."""
        pw_file = self.cdc_password_file
        if not pw_file.exists():
            pw_file.parent.mkdir(parents=True, exist_ok=True)
            pw_file.touch(mode=0o600)
            pw_file.write_text(secrets.token_urlsafe(18))
        password = pw_file.read_text().strip()
        self._mariadb_query(
            "CREATE USER IF NOT EXISTS 'root'@'127.0.0.1' IDENTIFIED BY '';"
            "GRANT ALL PRIVILEGES ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION;"
            f"CREATE USER IF NOT EXISTS '{CDC_USER}'@'127.0.0.1' IDENTIFIED BY '{password}';"
            f"ALTER USER '{CDC_USER}'@'127.0.0.1' IDENTIFIED BY '{password}';"
            # SELECT: schema and bootstrap reads; REPLICATION SLAVE: the binlog dump;
            # REPLICATION CLIENT (BINLOG MONITOR): SHOW MASTER STATUS / SHOW BINARY LOGS;
            # REPLICATION MASTER ADMIN: SHOW SLAVE HOSTS (the server_id conflict check).
            f"GRANT SELECT, REPLICATION SLAVE, REPLICATION CLIENT, REPLICATION MASTER ADMIN ON *.* "
            f"TO '{CDC_USER}'@'127.0.0.1'",
            via_socket=True,
            name=name,
        )

    # ----------------------------------------------------------------- Kafka
    @property
    def kafka_conf(self) -> Path:
        return self.state / "conf" / "kafka.properties"

    def _prepare_kafka(self) -> None:
        p = self.ports
        data = self.data("kafka")
        conf = self.kafka_conf
        conf.parent.mkdir(parents=True, exist_ok=True)
        conf.write_text(
            "\n".join(
                [
                    "process.roles=broker,controller",
                    "node.id=1",
                    f"controller.quorum.voters=1@127.0.0.1:{p.kafka_controller}",
                    f"listeners=PLAINTEXT://127.0.0.1:{p.kafka},CONTROLLER://127.0.0.1:{p.kafka_controller}",
                    f"advertised.listeners=PLAINTEXT://127.0.0.1:{p.kafka}",
                    "controller.listener.names=CONTROLLER",
                    "inter.broker.listener.name=PLAINTEXT",
                    "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
                    f"log.dirs={data}",
                    # Topics are created explicitly with num_shards partitions; a typo must fail.
                    "auto.create.topics.enable=false",
                    "num.partitions=1",
                    "offsets.topic.replication.factor=1",
                    "offsets.topic.num.partitions=8",
                    "transaction.state.log.replication.factor=1",
                    "transaction.state.log.min.isr=1",
                    "transaction.state.log.num.partitions=4",
                    "share.coordinator.state.topic.replication.factor=1",
                    "share.coordinator.state.topic.min.isr=1",
                    "group.initial.rebalance.delay.ms=0",
                    "",
                ]
            )
        )
        (conf.parent / "kafka-log4j2.properties").write_text(
            "\n".join(
                [
                    "rootLogger.level = INFO",
                    "rootLogger.appenderRef.stdout.ref = STDOUT",
                    "appender.stdout.type = Console",
                    "appender.stdout.name = STDOUT",
                    "appender.stdout.layout.type = PatternLayout",
                    "appender.stdout.layout.pattern = [%d] %p %m (%c)%n",
                    "logger.kafka.name = kafka",
                    "logger.kafka.level = WARN",
                    "logger.apache.name = org.apache.kafka",
                    "logger.apache.level = WARN",
                    "",
                ]
            )
        )
        if not (data / "meta.properties").exists():
            data.mkdir(parents=True, exist_ok=True)
            cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
            _run(
                [
                    "java",
                    "-cp",
                    f"{self.kafka_libs}/*",
                    *self._kafka_log4j(),
                    "kafka.tools.StorageTool",
                    "format",
                    # `=`: a base64 id may start with "-" and must not read as a flag.
                    f"--cluster-id={cluster_id}",
                    f"--config={conf}",
                ],
                "kafka: formatting the KRaft storage",
            )

    def _kafka_log4j(self) -> list[str]:
        return [f"-Dlog4j2.configurationFile={self.kafka_conf.parent / 'kafka-log4j2.properties'}"]

    def _kafka_cmd(self) -> list[str]:
        return [
            "java",
            "-Xms256m",
            "-Xmx1g",
            "-XX:+UseG1GC",
            "-Djava.awt.headless=true",
            *self._kafka_log4j(),
            "-cp",
            f"{self.kafka_libs}/*",
            "kafka.Kafka",
            str(self.kafka_conf),
        ]

    def _kafka_healthy(self) -> bool:
        from confluent_kafka import KafkaException
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({"bootstrap.servers": f"127.0.0.1:{self.ports.kafka}", "log_level": 0})
        try:
            return len(admin.list_topics(timeout=2).brokers) > 0
        except KafkaException:
            return False

    # ------------------------------------------------------------------- NSQ
    def _lookupd_cmd(self) -> list[str]:
        p = self.ports
        return [
            str(self.nsq_bin / "nsqlookupd"),
            f"--tcp-address=127.0.0.1:{p.lookupd_tcp}",
            f"--http-address=127.0.0.1:{p.lookupd_http}",
            "--broadcast-address=127.0.0.1",
        ]

    def _lookupd_healthy(self) -> bool:
        return _http_ok(
            f"http://127.0.0.1:{self.ports.lookupd_http}/ping", lambda body: body.strip() == b"OK"
        )

    def _prepare_nsqd(self) -> None:
        self.data("nsqd").mkdir(parents=True, exist_ok=True)

    def _nsqd_cmd(self) -> list[str]:
        p = self.ports
        return [
            str(self.nsq_bin / "nsqd"),
            f"--tcp-address=127.0.0.1:{p.nsqd_tcp}",
            f"--http-address=127.0.0.1:{p.nsqd_http}",
            f"--data-path={self.data('nsqd')}",
            f"--lookupd-tcp-address=127.0.0.1:{p.lookupd_tcp}",
            "--broadcast-address=127.0.0.1",
        ]

    def _nsqd_healthy(self) -> bool:
        return _http_ok(
            f"http://127.0.0.1:{self.ports.nsqd_http}/ping", lambda body: body.strip() == b"OK"
        )

    # ------------------------------------------------------------- lifecycle
    def pid(self, name: str) -> int | None:
        """The pid this stack started for `name`, if that process still runs that program."""
        path = self.pidfile(name)
        try:
            pid = int(path.read_text().strip())
            argv0 = (Path("/proc") / str(pid) / "cmdline").read_bytes().split(b"\0")[0]
        except (OSError, ValueError):
            return None
        if Path(argv0.decode(errors="replace")).name != self.services[name].binary:
            return None  # the pid was reused by another program
        return pid

    def _names(self, only: list[str] | None) -> list[str]:
        names = list(only or SERVICES)  # optional services only when named
        unknown = [n for n in names if n not in self.services]
        if unknown:
            raise StackError(f"unknown service {unknown[0]!r}; services: {', '.join(ALL_SERVICES)}")
        return [n for n in ALL_SERVICES if n in names]  # dependency order

    def up(self, only: list[str] | None = None, echo: Callable[[str], None] = print) -> None:
        self.state.mkdir(parents=True, exist_ok=True)
        (self.state / "ports.json").write_text(json.dumps(asdict(self.ports)))
        for name in self._names(only):
            svc = self.services[name]
            if self.pid(name) is not None and svc.healthy():
                svc.after_start()  # idempotent: repairs a setup a crash cut short
                continue
            echo(f"{name}: installing if needed, then starting")
            svc.install()
            svc.prepare()
            self.start(name, echo)

    def start(self, name: str, echo: Callable[[str], None] = print) -> None:
        svc = self.services[name]
        proc: subprocess.Popen[bytes] | None = None
        if self.pid(name) is None:
            for d in ("run", "logs"):
                (self.state / d).mkdir(parents=True, exist_ok=True)
            with self.log(name).open("ab") as log:
                proc = subprocess.Popen(
                    svc.command(),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                    cwd=self.state,
                )
            self.pidfile(name).write_text(str(proc.pid))
        self._wait_healthy(name, proc)
        svc.after_start()
        echo(f"{name}: healthy (pid {self.pid(name)})")

    def _wait_healthy(self, name: str, proc: subprocess.Popen[bytes] | None) -> None:
        svc = self.services[name]
        deadline = time.monotonic() + svc.start_timeout_s
        delay = 0.1
        while time.monotonic() < deadline:
            # Just after the fork /proc still shows our own argv, so trust the handle.
            alive = proc.poll() is None if proc is not None else self.pid(name) is not None
            if not alive:
                raise StackError(
                    f"{name} exited during start-up; last lines of "
                    f"{self.log(name)}:\n{self.log_tail(name)}"
                )
            if svc.healthy():
                return
            time.sleep(delay)
            delay = min(delay * 1.5, 1.0)
        raise StackError(
            f"{name} did not become healthy within {svc.start_timeout_s:.0f}s; "
            f"last lines of {self.log(name)}:\n{self.log_tail(name)}"
        )

    def log_tail(self, name: str, lines: int = 25) -> str:
        try:
            return "\n".join(self.log(name).read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, name: str, sig: int = signal.SIGTERM, grace_s: float = 30.0) -> bool:
        """Stop the process this stack started for `name`. False if none was running."""
        pid = self.pid(name)
        if pid is None:
            self.pidfile(name).unlink(missing_ok=True)
            return False
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + grace_s
        while self.pid(name) is not None and time.monotonic() < deadline:
            self._reap(pid)
            time.sleep(0.1)
        if self.pid(name) is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            while self.pid(name) is not None:
                self._reap(pid)
                time.sleep(0.05)
        self.pidfile(name).unlink(missing_ok=True)
        return True

    @staticmethod
    def _reap(pid: int) -> None:
        """Collect the exit status when the service is our own child (zombies keep /proc)."""
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)

    def restart(self, name: str, echo: Callable[[str], None] = print) -> None:
        self.stop(name)
        self.start(name, echo)

    def down(self, echo: Callable[[str], None] = print) -> None:
        for name in reversed(ALL_SERVICES):
            if self.stop(name):
                echo(f"{name}: stopped")

    def status(self) -> Iterator[tuple[str, int | None, bool, str]]:
        """(service, pid or None, healthy, endpoint) for each service, and for each
        optional service that runs."""
        for name in ALL_SERVICES:
            pid = self.pid(name)
            if pid is None and name in OPTIONAL_SERVICES:
                continue
            yield (
                name,
                pid,
                pid is not None and self.services[name].healthy(),
                self.endpoints()[name],
            )

    def endpoints(self) -> dict[str, str]:
        p = self.ports
        return {
            "etcd": f"127.0.0.1:{p.etcd}",
            "mariadb": f"127.0.0.1:{p.mariadb}",
            "kafka": f"127.0.0.1:{p.kafka}",
            "nsqlookupd": f"http://127.0.0.1:{p.lookupd_http}",
            "nsqd": f"127.0.0.1:{p.nsqd_tcp} (http 127.0.0.1:{p.nsqd_http})",
            "mariadb2": f"127.0.0.1:{p.mariadb2}",
            "mariadb_sink": f"127.0.0.1:{p.mariadb_sink}",
            "postgres": f"127.0.0.1:{p.postgres}",
        }

    def env(self) -> dict[str, str]:
        """SHARDCTL_* settings that point every shardctl process at this stack."""
        p = self.ports
        return {
            "SHARDCTL_ETCD_ENDPOINTS": f"127.0.0.1:{p.etcd}",
            "SHARDCTL_KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{p.kafka}",
            "SHARDCTL_MYSQL_HOST": "127.0.0.1",
            "SHARDCTL_MYSQL_PORT": str(p.mariadb),
            "SHARDCTL_MYSQL_USER": CDC_USER,
            "SHARDCTL_MYSQL_PASSWORD_FILE": str(self.cdc_password_file),
            "SHARDCTL_NSQ_NSQD_TCP_ADDRESSES": f"127.0.0.1:{p.nsqd_tcp}",
            "SHARDCTL_NSQ_NSQD_HTTP_ADDRESS": f"127.0.0.1:{p.nsqd_http}",
            **Postgres(self).env(),
        }


class Postgres:
    """PostgreSQL from Debian, its own cluster in `<state>/data/postgres` on 127.0.0.1
    only (no Unix socket), with a password user `shardctl`. PostgreSQL refuses to run
    as root: then the server runs as the `postgres` system user (setpriv, no fork, so
    the pid file names the server itself)."""

    USER = "shardctl"

    def __init__(self, stack: Stack) -> None:
        self.stack = stack

    def service(self) -> Service:
        return Service(
            "postgres", "postgres", self.install, self.prepare, self.command, self.healthy
        )

    @property
    def password_file(self) -> Path:
        return self.stack.state / "secrets" / "postgres_password"

    @property
    def datadir(self) -> Path:
        return self.stack.data("postgres")

    def _bin(self, name: str) -> str:
        found = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
        return str(found[-1]) if found else (shutil.which(name) or name)

    def install(self) -> None:
        if not Path(self._bin("postgres")).exists():
            self.stack._apt_install(["postgresql"])

    def _as_server_user(self) -> list[str]:
        if os.geteuid() != 0:
            return []
        return ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups"]

    def _own(self, path: Path) -> None:
        if os.geteuid() == 0:
            shutil.chown(path, "postgres", "postgres")

    def prepare(self) -> None:
        if not self.password_file.exists():
            self.password_file.parent.mkdir(parents=True, exist_ok=True)
            self.password_file.touch(mode=0o600)
            self.password_file.write_text(secrets.token_urlsafe(18))
        if self.stack.tls is not None:
            self._copy_certificates(self.stack.tls)
        if (self.datadir / "PG_VERSION").exists():
            return
        self.datadir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._own(self.datadir)
        # initdb reads the password from a file its own user can read; removed at once.
        initial = self.datadir.parent / "postgres-initial-password"
        initial.touch(mode=0o600)
        initial.write_text(self.password_file.read_text().strip())
        self._own(initial)
        try:
            _run(
                [
                    *self._as_server_user(),
                    self._bin("initdb"),
                    f"--pgdata={self.datadir}",
                    f"--username={self.USER}",
                    f"--pwfile={initial}",
                    "--auth-host=scram-sha-256",
                    "--auth-local=scram-sha-256",
                    "--encoding=UTF8",
                    "--locale=C",
                ],
                "postgres: initialising the cluster",
            )
        finally:
            initial.unlink(missing_ok=True)

    @property
    def _tls_dir(self) -> Path:
        return self.stack.data("postgres-tls")

    def _copy_certificates(self, certs: Certificates) -> None:
        """The server refuses a key others can read or its user does not own."""
        self._tls_dir.mkdir(parents=True, exist_ok=True)
        self._own(self._tls_dir)
        for source in (certs.ca, certs.server_cert, certs.server_key):
            target = self._tls_dir / source.name
            shutil.copyfile(source, target)
            target.chmod(0o600)
            self._own(target)

    def command(self) -> list[str]:
        settings = {
            "listen_addresses": "127.0.0.1",
            "port": str(self.stack.ports.postgres),
            "unix_socket_directories": "",
            "max_connections": "200",
        }
        certs = self.stack.tls
        if certs is not None:
            settings |= {
                "ssl": "on",
                "ssl_ca_file": str(self._tls_dir / certs.ca.name),
                "ssl_cert_file": str(self._tls_dir / certs.server_cert.name),
                "ssl_key_file": str(self._tls_dir / certs.server_key.name),
            }
        return [
            *self._as_server_user(),
            self._bin("postgres"),
            "-D",
            str(self.datadir),
            *(arg for key, value in settings.items() for arg in ("-c", f"{key}={value}")),
        ]

    def connect_args(self) -> dict[str, object]:
        return {
            "host": "127.0.0.1",
            "port": self.stack.ports.postgres,
            "user": self.USER,
            "password": self.password_file.read_text().strip(),
            "dbname": "postgres",
            "connect_timeout": 2,
        }

    def healthy(self) -> bool:
        import psycopg

        try:
            with psycopg.connect(**self.connect_args()) as conn:  # type: ignore[arg-type]
                return conn.execute("SELECT 1").fetchone() == (1,)
        except (psycopg.Error, OSError):
            return False

    def env(self) -> dict[str, str]:
        return {
            "SHARDCTL_SINK_POSTGRES_HOST": "127.0.0.1",
            "SHARDCTL_SINK_POSTGRES_PORT": str(self.stack.ports.postgres),
            "SHARDCTL_SINK_POSTGRES_USER": self.USER,
            "SHARDCTL_SINK_POSTGRES_PASSWORD_FILE": str(self.password_file),
        }
