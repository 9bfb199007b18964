#!/usr/bin/env bash
# Installs what a fresh machine lacks to build and test Hearth. Idempotent: each step
# checks before it installs.
set -euo pipefail

need_cmd() { command -v "$1" >/dev/null 2>&1; }

if ! need_cmd cargo; then
    echo "setup: cargo is not installed; install Rust with rustup (https://rustup.rs) first." >&2
    exit 1
fi

if ! need_cmd cargo-nextest; then
    echo "setup: installing cargo-nextest"
    cargo install cargo-nextest --locked
fi

# The network-namespace test needs iproute2 (`ip netns`); the disk-full test needs `mount`.
if ! need_cmd ip; then
    if [ "$(id -u)" = 0 ] && need_cmd apt-get; then
        echo "setup: installing iproute2"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iproute2
    else
        echo "setup: iproute2 (the ip command) is missing; install it as root for the namespace test" >&2
    fi
fi

# The NAT tests build routers in namespaces with iptables and check reachability with
# ping.
if ! need_cmd iptables || ! need_cmd ping; then
    if [ "$(id -u)" = 0 ] && need_cmd apt-get; then
        echo "setup: installing iptables and iputils-ping"
        if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iptables iputils-ping; then
            apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iptables iputils-ping
        fi
    else
        echo "setup: iptables or ping is missing; install iptables and iputils-ping as root for the NAT tests" >&2
    fi
fi

# The MQTT driver's test runs a real Mosquitto broker and its command-line clients.
if ! need_cmd mosquitto || ! need_cmd mosquitto_pub; then
    if [ "$(id -u)" = 0 ] && need_cmd apt-get; then
        echo "setup: installing mosquitto and mosquitto-clients"
        if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto mosquitto-clients; then
            apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto mosquitto-clients
        fi
    else
        echo "setup: mosquitto is missing; install mosquitto and mosquitto-clients as root for the MQTT test" >&2
    fi
fi

# The dashboard's browser tests drive a real headless Chromium over WebDriver.
if ! need_cmd chromium || ! need_cmd chromedriver; then
    if [ "$(id -u)" = 0 ] && need_cmd apt-get; then
        echo "setup: installing chromium and chromium-driver"
        if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; then
            apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver
        fi
    else
        echo "setup: chromium or chromedriver is missing; install chromium and chromium-driver as root for the dashboard's browser test" >&2
    fi
fi

# The demo posts OwnTracks bodies with curl, as the phone app would.
if ! need_cmd curl; then
    if [ "$(id -u)" = 0 ] && need_cmd apt-get; then
        echo "setup: installing curl"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq curl || {
            apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq curl
        }
    else
        echo "setup: curl is missing; the demo needs it" >&2
    fi
fi

# Computations are WebAssembly components built for wasm32-wasip2 (the examples, and
# what the tests run).
if need_cmd rustup && ! rustup target list --installed | grep -qx wasm32-wasip2; then
    echo "setup: adding the wasm32-wasip2 Rust target"
    rustup target add wasm32-wasip2
fi

# The simulator's Slurm test submits a real job array to a single-node cluster on this
# machine: munge for authentication, slurmctld and slurmd started directly (CI has no
# systemd), the node described by `slurmd -C`, no cgroups.
slurm_ready() { need_cmd slurmctld && need_cmd slurmd && need_cmd sbatch && need_cmd munged && need_cmd pgrep; }
if ! slurm_ready; then
    if [ "$(id -u)" = 0 ] && need_cmd apt-get; then
        echo "setup: installing slurm-wlm, munge and procps"
        if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge procps; then
            apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge procps
        fi
    else
        echo "setup: slurmctld, slurmd, sbatch, munged or pgrep is missing; install slurm-wlm, munge and procps as root for the simulator's Slurm test" >&2
    fi
fi
if slurm_ready; then
    if [ "$(id -u)" = 0 ]; then
        "$(dirname "$0")/slurm-cluster.sh"
    elif ! sinfo -h >/dev/null 2>&1; then
        echo "setup: no Slurm controller answers; run scripts/slurm-cluster.sh as root to start a one-node cluster for the simulator's Slurm test" >&2
    fi
fi
