#!/bin/bash
# Regenerate the pictures of docs/ and the README: the demo tree (`asyckpt tree` with no
# pid) and the sample service (examples/sample_service.py), each captured and drawn with
# `asyckpt graph`.  Run as root from a checkout with asyckpt and its bundled plugins
# installed, and Graphviz (apt-get install graphviz):
#
#     bash docs/pictures/make.sh          (or PYTHON=.venv/bin/python bash docs/pictures/make.sh)
set -eu
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
python=${PYTHON:-python3}
tmp=$(mktemp -d)
service=
cleanup() {
    # The service is the leader of its own session and process group: kill that group.
    if [ -n "$service" ]; then kill -KILL -- "-$service" 2>/dev/null || true; fi
    rm -rf "$tmp"
}
trap cleanup EXIT INT TERM

"$python" -m asyckpt tree -q -o "$tmp/demo.ackpt"
"$python" -m asyckpt graph "$tmp/demo.ackpt" -o "$here/demo.svg" --force

setsid "$python" "$repo/examples/sample_service.py" 3 "$tmp" >"$tmp/service.pid" </dev/null &
for _ in $(seq 100); do
    [ -s "$tmp/service.pid" ] && break
    sleep 0.1
done
service=$(cat "$tmp/service.pid")
"$python" -m asyckpt tree "$service" -q -o "$tmp/service.ackpt"
"$python" -m asyckpt graph "$tmp/service.ackpt" -o "$here/sample-service.svg" --force
ls -l "$here"/*.svg
