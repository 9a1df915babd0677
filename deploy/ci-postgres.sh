#!/usr/bin/env bash
# A PostgreSQL server for the SQL ledger tests (tests/ledger): nothing to do when one answers on
# 127.0.0.1:5432; otherwise Debian's postgresql is installed and a throwaway cluster started with trust
# auth for local connections (CI only: never on a machine whose PostgreSQL matters).
# The tests read TEST_POSTGRES_URL (default postgresql://postgres@127.0.0.1:5432/postgres).
set -euo pipefail

if pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null \
  || (exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null; then
  echo "ci-postgres: PostgreSQL answers on 127.0.0.1:5432"
  exit 0
fi

if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  echo "ci-postgres: installing postgresql (Debian)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
fi
initdbs=(/usr/lib/postgresql/*/bin/initdb)  # one per installed major version; the glob sorts them, newest last
bin=$(dirname "${initdbs[-1]}")
data=${PGDATA_CI:-/tmp/llmrouter-ci-postgres}
run_as=(); [[ $(id -u) == 0 ]] && run_as=(runuser -u postgres --)
if [[ ! -f $data/PG_VERSION ]]; then
  mkdir -p "$data"; [[ $(id -u) == 0 ]] && chown postgres "$data"
  "${run_as[@]}" "$bin/initdb" -D "$data" -U postgres --auth=trust >/dev/null
fi
"${run_as[@]}" "$bin/pg_ctl" -D "$data" -o "-c listen_addresses=127.0.0.1 -c port=5432 -c unix_socket_directories=/tmp" \
  -l "$data/server.log" -w start
echo "ci-postgres: started PostgreSQL on 127.0.0.1:5432 (data in $data)"
