#!/usr/bin/env python3
# =====================================================================
#  TEST STAND-IN for the flannel CNI plugin (flannel-io/cni-plugin).
#  This is NOT upstream's plugin and must never be deployed for real.
# =====================================================================
#
# Why it exists: podnet's tests run without internet access.  Upstream's
# flannel CNI plugin is a Go binary published only as a release asset
# (cni-plugin-flannel-linux-<arch>-v<version>.tgz, member flannel-<arch>),
# which cannot be downloaded on the test machines, and no Debian package
# ships it.  podnet's offline test mirror (tests/mirror/build.py) therefore
# packs THIS script as `flannel-amd64` in
# flannel-io/cni-plugin/releases/download/v1.7.1-flannel1/
#     cni-plugin-flannel-linux-amd64-v1.7.1-flannel1.tgz
# so that the toolkit's download/verify/install path and real pods on test
# nodes (which have python3) work end to end.
#
# What it does: the documented behaviour of upstream's plugin (README,
# flannel.go, flannel_linux.go), as a CNI meta-plugin:
#   * reads flanneld's subnet file (/run/flannel/subnet.env, or the conf's
#     "subnetFile"), failing if FLANNEL_NETWORK, FLANNEL_SUBNET, FLANNEL_MTU
#     or FLANNEL_IPMASQ is missing (IPv6 variants accepted as upstream does);
#   * ADD: builds the delegate config from the conf's "delegate" object
#     (name = conf name; type "bridge" unless set; mtu = FLANNEL_MTU and
#     ipMasq = !FLANNEL_IPMASQ unless set; isGateway true for bridge unless
#     set; cniVersion from the conf; runtimeConfig copied in; ipam built from
#     the conf's "ipam" with type host-local unless set, ranges =
#     [[{subnet: FLANNEL_SUBNET}]] and routes = conf routes + FLANNEL_NETWORK),
#     saves it to <dataDir>/<CNI_CONTAINERID> (dataDir defaults to
#     /var/lib/cni/flannel) and executes the delegate plugin from CNI_PATH
#     with the same environment, passing its stdout and exit status through;
#   * DEL: re-executes the saved delegate config with CNI_COMMAND=DEL and
#     removes the file on success; DEL of an unknown container succeeds;
#   * CHECK: succeeds (upstream's cmdCheck is a no-op);
#   * VERSION: reports the supported CNI spec versions.
# It never touches networking itself: the delegate plugins do that.
# Errors are CNI error objects {"cniVersion","code","msg"} on stdout, exit 1.

import ipaddress
import json
import os
import re
import subprocess
import sys
import tempfile

PLUGIN_VERSION = "1.7.1-flannel1"
SUPPORTED_VERSIONS = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]
CURRENT_VERSION = "1.1.0"
DEFAULT_SUBNET_FILE = "/run/flannel/subnet.env"
DEFAULT_DATA_DIR = "/var/lib/cni/flannel"
ABOUT = ("CNI Plugin flannel version v%s (linux/amd64) "
         "-- podnet TEST STAND-IN written in Python, not upstream's binary" % PLUGIN_VERSION)

# CNI spec error codes
ERR_INCOMPATIBLE_CNI_VERSION = 1
ERR_INVALID_ENVIRONMENT_VARIABLES = 4
ERR_IO_FAILURE = 5
ERR_DECODING_FAILURE = 6
ERR_INVALID_NETWORK_CONFIG = 7
ERR_INTERNAL = 999

CONTAINER_ID_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$")


class CNIError(Exception):
    def __init__(self, code, msg, details=""):
        Exception.__init__(self, msg)
        self.code = code
        self.msg = msg
        self.details = details


def version_tuple(v):
    try:
        return tuple(int(x) for x in v.split("."))
    except (AttributeError, ValueError):
        return ()


# ------------------------------------------------------------------ input

def load_conf(raw):
    try:
        conf = json.loads(raw.decode("utf-8") if isinstance(raw, bytes) else raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise CNIError(ERR_DECODING_FAILURE, "failed to load netconf: %s" % e)
    if not isinstance(conf, dict):
        raise CNIError(ERR_DECODING_FAILURE, "failed to load netconf: not a JSON object")
    for key in ("delegate", "ipam", "runtimeConfig"):
        if conf.get(key) is not None and not isinstance(conf[key], dict):
            raise CNIError(ERR_DECODING_FAILURE,
                           "failed to load netconf: %r must be a JSON object" % key)
    for key in ("name", "cniVersion", "subnetFile", "dataDir"):
        if conf.get(key) is not None and not isinstance(conf[key], str):
            raise CNIError(ERR_DECODING_FAILURE,
                           "failed to load netconf: %r must be a string" % key)
    return conf


def check_conf_version(conf, command):
    version = conf.get("cniVersion") or ""
    if version and version not in SUPPORTED_VERSIONS:
        raise CNIError(ERR_INCOMPATIBLE_CNI_VERSION, "incompatible CNI versions",
                       "config is %r, plugin supports %s" % (version, SUPPORTED_VERSIONS))
    if command == "CHECK" and version_tuple(version or "0.1.0") < (0, 4, 0):
        raise CNIError(ERR_INCOMPATIBLE_CNI_VERSION, "config version does not allow CHECK")


def check_env(command):
    required = {
        "ADD": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
        "CHECK": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
        "DEL": ("CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH"),
    }[command]
    missing = [k for k in required if not os.environ.get(k)]
    if missing:
        raise CNIError(ERR_INVALID_ENVIRONMENT_VARIABLES,
                       "required env variables [%s] missing" % ", ".join(missing))
    if not CONTAINER_ID_RE.match(os.environ["CNI_CONTAINERID"]):
        raise CNIError(ERR_INVALID_ENVIRONMENT_VARIABLES, "invalid characters in containerID",
                       os.environ["CNI_CONTAINERID"])


def _networks(path, key, value):
    out = []
    for cidr in value.split(","):
        try:
            nw = str(ipaddress.ip_network(cidr.strip(), strict=False))
        except ValueError as e:
            raise CNIError(ERR_INTERNAL, "loadFlannelSubnetEnv failed: %s: invalid %s %r: %s"
                           % (path, key, value, e))
        if nw not in out:
            out.append(nw)
    return out


def load_subnet_env(path):
    """Parse flanneld's subnet.env like upstream's loadFlannelSubnetEnv."""
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise CNIError(ERR_INTERNAL, "loadFlannelSubnetEnv failed: open %s: %s"
                       % (path, e.strerror or e))
    env = {"nws": [], "sn": None, "ip6nws": [], "ip6sn": None, "mtu": None, "ipmasq": None}
    for line in lines:
        key, sep, value = line.strip().partition("=")
        if not sep:
            continue
        value = value.strip()
        if key == "FLANNEL_NETWORK":
            env["nws"] = _networks(path, key, value)
        elif key == "FLANNEL_SUBNET":
            env["sn"] = _networks(path, key, value)[0]
        elif key == "FLANNEL_IPV6_NETWORK":
            env["ip6nws"] = _networks(path, key, value)
        elif key == "FLANNEL_IPV6_SUBNET":
            env["ip6sn"] = _networks(path, key, value)[0]
        elif key == "FLANNEL_MTU":
            if not value.isdigit():
                raise CNIError(ERR_INTERNAL, "loadFlannelSubnetEnv failed: %s: invalid FLANNEL_MTU %r"
                               % (path, value))
            env["mtu"] = int(value)
        elif key == "FLANNEL_IPMASQ":
            env["ipmasq"] = value == "true"
    missing = []
    if not env["nws"] and not env["ip6nws"]:
        missing += ["FLANNEL_NETWORK", "FLANNEL_IPV6_NETWORK"]
    if env["sn"] is None and env["ip6sn"] is None:
        missing += ["FLANNEL_SUBNET", "FLANNEL_IPV6_SUBNET"]
    if env["mtu"] is None:
        missing.append("FLANNEL_MTU")
    if env["ipmasq"] is None:
        missing.append("FLANNEL_IPMASQ")
    if missing:
        raise CNIError(ERR_INTERNAL, "loadFlannelSubnetEnv failed: %s is missing %s"
                       % (path, ", ".join(missing)))
    return env


# ------------------------------------------------------------ delegation

def build_delegate(conf, fenv):
    """The delegate netconf, as upstream's cmdAdd/doCmdAdd/getDelegateIPAM build it."""
    delegate = conf.get("delegate")
    if delegate is None:
        delegate = {}
    else:
        if "type" in delegate and not isinstance(delegate["type"], str):
            raise CNIError(ERR_INVALID_NETWORK_CONFIG,
                           "'delegate' dictionary, if present, must have (string) 'type' field")
        if "name" in delegate:
            raise CNIError(ERR_INVALID_NETWORK_CONFIG,
                           "'delegate' dictionary must not have 'name' field, it'll be set by flannel")
        if "ipam" in delegate:
            raise CNIError(ERR_INVALID_NETWORK_CONFIG,
                           "'delegate' dictionary must not have 'ipam' field, it'll be set by flannel")
        delegate = dict(delegate)

    if conf.get("runtimeConfig") is not None:
        delegate["runtimeConfig"] = conf["runtimeConfig"]

    delegate["name"] = conf.get("name") or ""
    if "type" not in delegate:
        delegate["type"] = "bridge"
    if "ipMasq" not in delegate:
        # if flannel is not doing ipmasq, the delegate should
        delegate["ipMasq"] = not fenv["ipmasq"]
    if "mtu" not in delegate:
        delegate["mtu"] = fenv["mtu"]
    if delegate["type"] == "bridge" and "isGateway" not in delegate:
        delegate["isGateway"] = True
    if conf.get("cniVersion"):
        delegate["cniVersion"] = conf["cniVersion"]

    ipam = dict(conf.get("ipam") or {})
    if "type" not in ipam:
        ipam["type"] = "host-local"
    ranges = []
    if fenv["sn"]:
        ranges.append([{"subnet": fenv["sn"]}])
    if fenv["ip6sn"]:
        ranges.append([{"subnet": fenv["ip6sn"]}])
    ipam["ranges"] = ranges
    routes = ipam.get("routes") or []
    if not isinstance(routes, list) or not all(isinstance(r, dict) and "dst" in r for r in routes):
        raise CNIError(ERR_INTERNAL, "failed to assemble Delegate IPAM: failed to read IPAM routes: "
                       "ipam.routes must be a list of objects with 'dst'")
    routes = list(routes)
    for nw in fenv["nws"] + fenv["ip6nws"]:
        routes.append({"dst": nw})
    ipam["routes"] = routes
    delegate["ipam"] = ipam
    return delegate


def find_in_path(plugin, cni_path):
    dirs = [d for d in cni_path.split(":") if d]
    if not plugin or "/" in plugin or plugin in (".", ".."):
        raise CNIError(ERR_INVALID_NETWORK_CONFIG, "invalid plugin name %r" % plugin)
    for d in dirs:
        candidate = os.path.join(d, plugin)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise CNIError(ERR_INTERNAL, 'failed to find plugin "%s" in path %s' % (plugin, dirs))


def exec_delegate(plugin, netconf_bytes, command):
    path = find_in_path(plugin, os.environ.get("CNI_PATH", ""))
    env = dict(os.environ)
    env["CNI_COMMAND"] = command
    proc = subprocess.run([path], input=netconf_bytes, env=env, stdout=subprocess.PIPE)
    out = sys.stdout.buffer
    out.write(proc.stdout)
    out.flush()
    return proc.returncode


def dump(obj):
    # Go's json.Marshal of a map: sorted keys, compact.
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def save_scratch(data_dir, container_id, data):
    os.makedirs(data_dir, mode=0o700, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".%s." % container_id, dir=data_dir)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, os.path.join(data_dir, container_id))
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


# -------------------------------------------------------------- commands

def cmd_add(conf):
    fenv = load_subnet_env(conf.get("subnetFile") or DEFAULT_SUBNET_FILE)
    delegate = build_delegate(conf, fenv)
    data = dump(delegate)
    sys.stderr.write("delegateAdd: netconf sent to delegate plugin:\n%s\n" % data.decode())
    data_dir = conf.get("dataDir") or DEFAULT_DATA_DIR
    try:
        save_scratch(data_dir, os.environ["CNI_CONTAINERID"], data)
    except OSError as e:
        raise CNIError(ERR_IO_FAILURE, "failed to save delegate netconf in %s: %s" % (data_dir, e))
    return exec_delegate(delegate["type"], data, "ADD")


def cmd_del(conf):
    data_dir = conf.get("dataDir") or DEFAULT_DATA_DIR
    path = os.path.join(data_dir, os.environ["CNI_CONTAINERID"])
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        # Per spec: DEL of something already gone succeeds.
        return 0
    except OSError as e:
        raise CNIError(ERR_IO_FAILURE, "failed to read %s: %s" % (path, e))
    try:
        plugin = json.loads(data.decode("utf-8"))["type"]
        if not isinstance(plugin, str):
            raise ValueError("type is not a string")
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        # Like upstream: the interface stays until reboot; do not fail DEL.
        sys.stderr.write("failed to parse netconf %s: %s\n" % (path, e))
        return 0
    rc = exec_delegate(plugin, data, "DEL")
    if rc == 0:
        try:
            os.remove(path)
        except OSError:
            pass
    return rc


def emit_error(err, cni_version):
    obj = {"cniVersion": cni_version, "code": err.code, "msg": err.msg}
    if err.details:
        obj["details"] = err.details
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()
    return 1


def main():
    command = os.environ.get("CNI_COMMAND", "")
    if command == "":
        sys.stderr.write(ABOUT + "\n")
        sys.stderr.write("CNI protocol versions supported: %s\n" % ", ".join(SUPPORTED_VERSIONS))
        return 0
    raw = sys.stdin.buffer.read()
    if command == "VERSION":
        sys.stdout.write(json.dumps({"cniVersion": CURRENT_VERSION,
                                     "supportedVersions": SUPPORTED_VERSIONS}) + "\n")
        return 0
    cni_version = CURRENT_VERSION
    try:
        if command not in ("ADD", "DEL", "CHECK"):
            raise CNIError(ERR_INVALID_ENVIRONMENT_VARIABLES, "unknown CNI_COMMAND: %s" % command)
        check_env(command)
        conf = load_conf(raw)
        if conf.get("cniVersion") in SUPPORTED_VERSIONS:
            cni_version = conf["cniVersion"]
        check_conf_version(conf, command)
        if command == "ADD":
            return cmd_add(conf)
        if command == "DEL":
            return cmd_del(conf)
        return 0  # CHECK: upstream's cmdCheck is a no-op
    except CNIError as e:
        return emit_error(e, cni_version)
    except Exception as e:  # never print a traceback instead of a CNI error
        return emit_error(CNIError(ERR_INTERNAL, "%s: %s" % (type(e).__name__, e)), cni_version)


if __name__ == "__main__":
    sys.exit(main())
