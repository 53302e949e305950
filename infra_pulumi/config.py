"""Typed, validated stack configuration.

All knobs live under the ``healthpredict:`` namespace (plus ``aws:region``). Values are parsed
once into a frozen :class:`InfraConfig` whose ``__post_init__`` refuses unsafe or malformed
settings, so a bad ``pulumi config set`` fails the preview loudly instead of opening a port to
the internet or pointing the host at somebody's laptop.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import re
from dataclasses import dataclass, field
from typing import Any

import pulumi
from pulumi.runtime import config as runtime_config

NAMESPACE = "healthpredict"
KNOWN_KEYS = frozenset(
    {
        "owner", "allowedCidrs", "sshCidrs", "allowUnsafeIngress", "azCount", "vpcCidr", "instanceType",
        "rootVolumeGb", "kmsKeyArn", "forceDestroy", "ecrKeepLast", "noncurrentVersionDays", "repoUrl",
        "repoRef", "composeFile", "apiPorts", "minIngressPrefix", "minIngressPrefixV6", "kubectlVersion",
        "kubectlSha256", "minikubeVersion", "minikubeSha256", "rawDataUri",
    }
)  # fmt: skip
#: Keys that name no setting of this program, refused with the reason rather than with "unknown key".
RETIRED_KEYS = {
    key: "MLflow and Prefect speak plain HTTP and are never published beyond the host; reach them through an SSM "
    "or SSH tunnel to its ports 5000 and 4200 (docs/INFRA.md: Reaching MLflow and Prefect)"
    for key in ("mlflowPort", "prefectPort")
}
#: Ports the security group never opens to allowedCidrs, so no apiPorts range may include them: MLflow's and
#: Prefect's (plain HTTP, reached through a tunnel) and SSH's (its own rule, sshCidrs).
HOST_ONLY_PORTS = {"MLflow": 5000, "Prefect": 4200, "SSH": 22}
#: SSH's own widest ranges, whatever minIngressPrefix allows for the API: minIngressPrefix may tighten SSH, never
#: relax it.
SSH_MIN_PREFIX, SSH_MIN_PREFIX_V6 = 24, 48

_INSTANCE_TYPE_RE = re.compile(r"^[a-z][a-z0-9-]*\.[a-z0-9]+$")
# Instance families whose suffix letters contain "g" (t4g, m7g, c7gn, ...) are Graviton/arm64;
# the AMI lookup and the Minikube/kubectl downloads are amd64-only.
_ARM_FAMILY_RE = re.compile(r"^[a-z]+\d+[a-z]*g[a-z]*\.")
_REPO_REF_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,199}$")
_REPO_URL_RE = re.compile(r"^(https://[A-Za-z0-9.-]+(:\d+)?/[A-Za-z0-9._~/-]+|git@[A-Za-z0-9.-]+:[A-Za-z0-9._~/-]+)$")
_COMPOSE_FILE_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._/-]{0,199}\.ya?ml$")
_OWNER_RE = re.compile(r"^[A-Za-z0-9 _.:/=+@-]{1,128}$")
_VERSION_RE = re.compile(r"^v\d+\.\d+\.\d+$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
# Pinned tool downloads of the host bootstrap: release version and the sha256 of its linux-amd64 binary.
KUBECTL_VERSION, KUBECTL_SHA256 = "v1.35.0", "a2e984a18a0c063279d692533031c1eff93a262afcc0afdc517375432d060989"
MINIKUBE_VERSION, MINIKUBE_SHA256 = "v1.38.1", "099477eaf248bcb5bcea8ce78a2898e93ac01461c35189da1848c3de82ecd22e"
#: The raw data the host fetches by default: UCI dataset 296, the same URL as
#: ``healthpredict.settings.UCI_DATASET_URL`` (the program cannot import healthpredict; a test keeps them equal).
UCI_DATASET_URL = "https://archive.ics.uci.edu/static/public/296/diabetes+130-us+hospitals+for+years+1999-2008.zip"
# rawDataUri: an https:// URL, or an s3:// object, of a .zip or .csv; no query, no shell metacharacters.
_RAW_DATA_URI_RE = re.compile(
    r"^(https://[A-Za-z0-9.-]+(:\d+)?|s3://(?P<bucket>[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]))/[A-Za-z0-9._~+%/-]+\.(zip|csv)$"
)
_KMS_ARN_RE = re.compile(r"^arn:aws[a-z-]*:kms:[a-z0-9-]+:\d{12}:(key|alias)/[A-Za-z0-9/_-]+$")
# AWS region names: eu-west-1, us-gov-west-1, ap-southeast-4, us-isob-east-1, ...
_REGION_RE = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d{1,2}$")


def check_region(region: str) -> str:
    """``aws:region`` goes into the host's root bootstrap script and its .env: only a region name passes."""
    if not region:
        raise ValueError("aws:region is required; set it with `pulumi config set aws:region <region>`")
    if not _REGION_RE.fullmatch(region):
        raise ValueError(f"aws:region: {region!r} is not an AWS region name such as eu-west-1")
    return region


def _parse_cidrs(key: str, values: tuple[str, ...]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    nets = []
    for value in values:
        if not isinstance(value, str):
            raise ValueError(f"{NAMESPACE}:{key}: {value!r} is not a CIDR string")
        try:
            nets.append(ipaddress.ip_network(value.strip(), strict=True))
        except ValueError as exc:
            raise ValueError(f"{NAMESPACE}:{key}: {value!r} is not a valid CIDR block ({exc})") from exc
    return tuple(nets)


def _check_port(key: str, port: int) -> None:
    if not 1 <= port <= 65535:
        raise ValueError(f"{NAMESPACE}:{key}: port {port} is outside 1-65535")


def parse_port_range(key: str, value: str) -> tuple[int, int]:
    """Parse ``"8000"`` or ``"30000-32767"`` into an inclusive ``(from, to)`` pair."""
    match = re.fullmatch(r"\s*(\d{1,5})\s*(?:-\s*(\d{1,5})\s*)?", str(value))
    if not match:
        raise ValueError(f"{NAMESPACE}:{key}: {value!r} is not a port or a 'from-to' port range")
    low = int(match.group(1))
    high = int(match.group(2) or low)
    _check_port(key, low)
    _check_port(key, high)
    if high < low:
        raise ValueError(f"{NAMESPACE}:{key}: range {value!r} ends before it starts")
    return low, high


@dataclass(frozen=True)
class InfraConfig:
    """Everything the components need; construction validates it."""

    owner: str
    region: str
    allowed_cidrs: tuple[str, ...]
    repo_url: str
    ssh_cidrs: tuple[str, ...] = ()
    allow_unsafe_ingress: bool = False
    az_count: int = 2
    vpc_cidr: str = "10.42.0.0/16"
    instance_type: str = "t3.xlarge"
    root_volume_gb: int = 60
    kms_key_arn: str | None = None
    force_destroy: bool = False
    ecr_keep_last: int = 20
    noncurrent_version_days: int = 30
    repo_ref: str = "main"
    compose_file: str | None = None
    api_ports: tuple[int, int] = (8000, 8000)
    # The widest ingress ranges accepted in allowedCidrs; SSH never accepts wider than SSH_MIN_PREFIX(_V6).
    min_ingress_prefix: int = 24
    min_ingress_prefix_v6: int = 48
    kubectl_version: str = KUBECTL_VERSION
    kubectl_sha256: str = KUBECTL_SHA256
    minikube_version: str = MINIKUBE_VERSION
    minikube_sha256: str = MINIKUBE_SHA256
    raw_data_uri: str = UCI_DATASET_URL
    subnet_cidrs: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        if not self.owner or not _OWNER_RE.fullmatch(self.owner):
            raise ValueError(
                f"{NAMESPACE}:owner is required (a person or team, used in the 'owner' tag); "
                f"got {self.owner!r}. Set it with `pulumi config set {NAMESPACE}:owner <name>`."
            )
        check_region(self.region)
        self._validate_ingress()
        self._validate_network()
        self._validate_compute()
        self._validate_storage()
        self._validate_repo()
        self._validate_tools()
        raw_data_bucket(self.raw_data_uri)
        low, high = self.api_ports
        for port in (low, high):
            _check_port("apiPorts", port)
        for name, port in HOST_ONLY_PORTS.items():
            if low <= port <= high:
                raise ValueError(
                    f"{NAMESPACE}:apiPorts: {low}-{high} includes {port} ({name}), which the security group never "
                    "opens; list the API's port or NodePort range only"
                )

    def _validate_ingress(self) -> None:
        if not self.allowed_cidrs:
            raise ValueError(
                f"{NAMESPACE}:allowedCidrs is required and must list at least one CIDR "
                "(e.g. your office or VPN egress, 203.0.113.10/32); there is no default."
            )
        if not 8 <= self.min_ingress_prefix <= 32 or not 16 <= self.min_ingress_prefix_v6 <= 128:
            raise ValueError(
                f"{NAMESPACE}:minIngressPrefix must be in 8-32 and minIngressPrefixV6 in 16-128, got "
                f"{self.min_ingress_prefix} and {self.min_ingress_prefix_v6}"
            )
        for net in _parse_cidrs("sshCidrs", self.ssh_cidrs):
            limit = self.ssh_limit(net)
            if net.prefixlen < limit:
                raise ValueError(
                    f"{NAMESPACE}:sshCidrs contains {net}, wider than /{limit}: SSH is never opened to a whole "
                    "range, whatever minIngressPrefix and allowUnsafeIngress say. List specific CIDRs or use SSM "
                    "Session Manager."
                )
        for net in _parse_cidrs("allowedCidrs", self.allowed_cidrs):
            if self._too_wide(net) and not self.allow_unsafe_ingress:
                raise ValueError(
                    f"{NAMESPACE}:allowedCidrs contains {net}, wider than /{self._limit(net)} (minIngressPrefix): it "
                    f"would open the API to that whole range; list narrower CIDRs, or set "
                    f"{NAMESPACE}:allowUnsafeIngress=true to accept it explicitly."
                )

    def _limit(self, net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> int:
        return self.min_ingress_prefix if net.version == 4 else self.min_ingress_prefix_v6

    def _too_wide(self, net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> bool:
        """Wider than the limit (0.0.0.0/1 and 128.0.0.0/1 included), or public space reached through ::/0."""
        return net.prefixlen < self._limit(net)

    def ssh_limit(self, net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> int:
        """SSH's widest accepted prefix: its own limit, or minIngressPrefix(V6) where that is stricter."""
        own = SSH_MIN_PREFIX if net.version == 4 else SSH_MIN_PREFIX_V6
        return max(own, self._limit(net))

    def _validate_network(self) -> None:
        try:
            vpc = ipaddress.IPv4Network(self.vpc_cidr, strict=True)
        except ValueError as exc:
            raise ValueError(f"{NAMESPACE}:vpcCidr: {self.vpc_cidr!r} is not a valid IPv4 CIDR ({exc})") from exc
        if not 16 <= vpc.prefixlen <= 24:
            raise ValueError(f"{NAMESPACE}:vpcCidr: {self.vpc_cidr} must have a prefix between /16 and /24")
        if not 1 <= self.az_count <= 6:
            raise ValueError(f"{NAMESPACE}:azCount must be between 1 and 6, got {self.az_count}")
        # Carve equal /+4 public subnets (a /16 gives /20s) so adding AZs never renumbers old ones.
        subnets = list(vpc.subnets(new_prefix=vpc.prefixlen + 4))[: self.az_count]
        object.__setattr__(self, "subnet_cidrs", tuple(str(s) for s in subnets))

    def _validate_compute(self) -> None:
        if not _INSTANCE_TYPE_RE.fullmatch(self.instance_type):
            raise ValueError(f"{NAMESPACE}:instanceType: {self.instance_type!r} is not an EC2 instance type")
        if _ARM_FAMILY_RE.match(self.instance_type):
            raise ValueError(
                f"{NAMESPACE}:instanceType: {self.instance_type!r} is arm64 (Graviton); the AMI lookup and "
                "the Minikube/kubectl installs are amd64, pick an x86_64 type such as t3.xlarge"
            )
        if not 30 <= self.root_volume_gb <= 2048:
            raise ValueError(f"{NAMESPACE}:rootVolumeGb must be between 30 and 2048, got {self.root_volume_gb}")

    def _validate_storage(self) -> None:
        if self.kms_key_arn is not None and not _KMS_ARN_RE.fullmatch(self.kms_key_arn):
            raise ValueError(f"{NAMESPACE}:kmsKeyArn: {self.kms_key_arn!r} is not a KMS key/alias ARN")
        if not 1 <= self.ecr_keep_last <= 1000:
            raise ValueError(f"{NAMESPACE}:ecrKeepLast must be between 1 and 1000, got {self.ecr_keep_last}")
        if not 1 <= self.noncurrent_version_days <= 3650:
            raise ValueError(
                f"{NAMESPACE}:noncurrentVersionDays must be between 1 and 3650, got {self.noncurrent_version_days}"
            )

    def _validate_tools(self) -> None:
        for key, version in (("kubectlVersion", self.kubectl_version), ("minikubeVersion", self.minikube_version)):
            if not _VERSION_RE.fullmatch(version):
                raise ValueError(f"{NAMESPACE}:{key}: {version!r} is not a release version such as v1.35.0")
        for key, digest in (("kubectlSha256", self.kubectl_sha256), ("minikubeSha256", self.minikube_sha256)):
            if not _SHA256_RE.fullmatch(digest):
                raise ValueError(f"{NAMESPACE}:{key}: {digest!r} is not a sha256 hex digest")

    def _validate_repo(self) -> None:
        # Both values end up in a root shell script, so only plain remote URLs and ref names pass.
        if not self.repo_url or not _REPO_URL_RE.fullmatch(self.repo_url):
            raise ValueError(
                f"{NAMESPACE}:repoUrl is required and must be an https:// or git@host: remote URL "
                f"of the project repository; got {self.repo_url!r}"
            )
        if not _REPO_REF_RE.fullmatch(self.repo_ref) or ".." in self.repo_ref:
            raise ValueError(f"{NAMESPACE}:repoRef: {self.repo_ref!r} is not a branch, tag or commit name")
        if self.compose_file is not None and (
            not all(_COMPOSE_FILE_RE.fullmatch(part) for part in self.compose_file.split(":"))
            or ".." in self.compose_file
        ):
            raise ValueError(
                f"{NAMESPACE}:composeFile: {self.compose_file!r} must be relative paths to .yml/.yaml files "
                "inside the repository, separated by ':'"
            )

    @property
    def ipv4_allowed(self) -> tuple[str, ...]:
        return tuple(c for c in self.allowed_cidrs if ipaddress.ip_network(c).version == 4)

    @property
    def ipv6_allowed(self) -> tuple[str, ...]:
        return tuple(c for c in self.allowed_cidrs if ipaddress.ip_network(c).version == 6)


def raw_data_bucket(uri: str) -> str | None:
    """The bucket of an ``s3://`` ``rawDataUri`` (None for an https:// URL); refuses any other form."""
    match = _RAW_DATA_URI_RE.fullmatch(uri)
    if match is None or "/../" in uri or uri.endswith("/.."):
        raise ValueError(
            f"{NAMESPACE}:rawDataUri: {uri!r} must be an https:// URL or an s3://<this stack's bucket>/<key> URI "
            "of the raw .zip or .csv file (letters, digits and ._~+%/- only, no query)"
        )
    return match.group("bucket")


def check_raw_data_uri(uri: str, bucket_name: str) -> None:
    """Refuse an ``s3://`` ``rawDataUri`` outside this stack's bucket: the host's role reads no other bucket.

    Runs once the bucket's generated name is known (the user data), so a new stack's preview cannot catch it.
    """
    bucket = raw_data_bucket(uri)
    if bucket is not None and bucket != bucket_name:
        raise ValueError(
            f"{NAMESPACE}:rawDataUri: {uri!r} is in bucket {bucket!r}, not in this stack's bucket {bucket_name!r} "
            f"(`pulumi stack output bucket_name`), the only one the host's role may read; upload the file there"
        )


def _as_str_tuple(key: str, value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        # `pulumi config set healthpredict:allowedCidrs 1.2.3.4/32` stores a plain string.
        value = [v for v in value.split(",") if v.strip()]
    if not isinstance(value, list):
        raise ValueError(f"{NAMESPACE}:{key} must be a list of CIDR strings, got {value!r}")
    return tuple(str(v).strip() for v in value)


def _get_list(cfg: pulumi.Config, key: str) -> Any:
    raw = cfg.get(key)
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def check_known_keys(keys: set[str] | frozenset[str]) -> None:
    """Refuse unknown ``healthpredict:`` keys: a typo such as ``allowUnsafeIngres`` must not be ignored."""
    for full_key in sorted(keys):
        namespace, _, key = full_key.partition(":")
        if namespace == NAMESPACE and key in RETIRED_KEYS:
            raise ValueError(f"{full_key} is not a setting: {RETIRED_KEYS[key]}; remove it from the stack config")
        if namespace == NAMESPACE and key not in KNOWN_KEYS:
            close = difflib.get_close_matches(key, sorted(KNOWN_KEYS), n=1)
            hint = f" (did you mean {NAMESPACE}:{close[0]}?)" if close else ""
            raise ValueError(f"unknown config key {full_key}{hint}; known keys: {', '.join(sorted(KNOWN_KEYS))}")


def _configured_keys() -> set[str]:
    # Values can arrive via set_all_config (engine/tests) or the PULUMI_CONFIG environment bag.
    return set(runtime_config.CONFIG.get()) | set(runtime_config.get_config_env())


def load_config() -> InfraConfig:
    """Read the current stack's configuration (called from ``__main__`` only, never at import)."""
    check_known_keys(_configured_keys())
    cfg = pulumi.Config(NAMESPACE)
    aws_cfg = pulumi.Config("aws")

    def opt_int(key: str, default: int) -> int:
        value = cfg.get_int(key)
        return default if value is None else value

    def opt_bool(key: str, default: bool) -> bool:
        value = cfg.get_bool(key)
        return default if value is None else value

    return InfraConfig(
        owner=(cfg.get("owner") or "").strip(),
        region=(aws_cfg.get("region") or "").strip(),
        allowed_cidrs=_as_str_tuple("allowedCidrs", _get_list(cfg, "allowedCidrs")),
        ssh_cidrs=_as_str_tuple("sshCidrs", _get_list(cfg, "sshCidrs")),
        allow_unsafe_ingress=opt_bool("allowUnsafeIngress", False),
        az_count=opt_int("azCount", 2),
        vpc_cidr=cfg.get("vpcCidr") or "10.42.0.0/16",
        instance_type=cfg.get("instanceType") or "t3.xlarge",
        root_volume_gb=opt_int("rootVolumeGb", 60),
        kms_key_arn=cfg.get("kmsKeyArn") or None,
        force_destroy=opt_bool("forceDestroy", False),
        ecr_keep_last=opt_int("ecrKeepLast", 20),
        noncurrent_version_days=opt_int("noncurrentVersionDays", 30),
        repo_url=(cfg.get("repoUrl") or "").strip(),
        repo_ref=(cfg.get("repoRef") or "main").strip(),
        compose_file=(cfg.get("composeFile") or "").strip() or None,
        api_ports=parse_port_range("apiPorts", cfg.get("apiPorts") or "8000"),
        min_ingress_prefix=opt_int("minIngressPrefix", 24),
        min_ingress_prefix_v6=opt_int("minIngressPrefixV6", 48),
        kubectl_version=cfg.get("kubectlVersion") or KUBECTL_VERSION,
        kubectl_sha256=cfg.get("kubectlSha256") or KUBECTL_SHA256,
        minikube_version=cfg.get("minikubeVersion") or MINIKUBE_VERSION,
        minikube_sha256=cfg.get("minikubeSha256") or MINIKUBE_SHA256,
        raw_data_uri=(cfg.get("rawDataUri") or UCI_DATASET_URL).strip(),
    )
