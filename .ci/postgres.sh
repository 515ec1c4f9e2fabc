# A throwaway PostgreSQL cluster for the tests, from Debian's packages, on 127.0.0.1 only.
#
# Sourced by .ci/run; developers can use it too:
#     source .ci/postgres.sh && start_test_postgres && .venv/bin/pytest tests/test_storage.py
#     stop_test_postgres
# start_test_postgres exports GRM_TEST_POSTGRES_URL, which tests/conftest.py reads to run every
# test that uses the `db` fixture on PostgreSQL as well as on SQLite.

# The newest server installed by Debian's postgresql package (binaries are not on PATH there).
postgres_bin_dir() {
    ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1
}

start_test_postgres() {
    local bin port password
    bin=$(postgres_bin_dir)
    if [ -z "$bin" ] || [ ! -x "$bin/initdb" ]; then
        echo "PostgreSQL server not installed (apt-get install postgresql)" >&2
        return 1
    fi
    # Everything (data, socket, logs) lives in one temp dir that stop_test_postgres deletes.
    GRM_PG_DIR=$(mktemp -d -t grm-postgres.XXXXXX)
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    password=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
    printf '%s\n' "$password" >"$GRM_PG_DIR/pwfile"
    # initdb and postgres refuse to run as root (CI runs as root): use the postgres account
    # that Debian's package creates.
    GRM_PG_AS=()
    if [ "$(id -u)" = 0 ]; then
        chown -R postgres: "$GRM_PG_DIR"
        GRM_PG_AS=(runuser -u postgres --)
    fi
    # UTF8 whatever the CI locale is: tests round-trip non-ASCII text byte-exact.
    if ! "${GRM_PG_AS[@]}" "$bin/initdb" -D "$GRM_PG_DIR/data" -U grm -E UTF8 --no-locale \
        --auth=scram-sha-256 --pwfile="$GRM_PG_DIR/pwfile" >"$GRM_PG_DIR/initdb.log" 2>&1; then
        cat "$GRM_PG_DIR/initdb.log" >&2
        return 1
    fi
    rm -f "$GRM_PG_DIR/pwfile"
    # Loopback only, socket in the temp dir. fsync off: the cluster is thrown away after the
    # run, and durability against a killed client (what the tests check) does not need it.
    if ! "${GRM_PG_AS[@]}" "$bin/pg_ctl" -D "$GRM_PG_DIR/data" -l "$GRM_PG_DIR/server.log" -w -s \
        -o "-c listen_addresses=127.0.0.1 -p $port -k $GRM_PG_DIR -c fsync=off" start; then
        cat "$GRM_PG_DIR/server.log" >&2
        return 1
    fi
    PGPASSWORD=$password "$bin/createdb" -h 127.0.0.1 -p "$port" -U grm grm_test
    export GRM_PG_DIR
    export GRM_TEST_POSTGRES_URL="postgresql+psycopg://grm:${password}@127.0.0.1:${port}/grm_test"
    echo "PostgreSQL $(basename "$(dirname "$bin")") for the tests on 127.0.0.1:$port ($GRM_PG_DIR)"
}

stop_test_postgres() {
    local bin
    [ -n "${GRM_PG_DIR:-}" ] || return 0
    bin=$(postgres_bin_dir)
    if [ -f "$GRM_PG_DIR/data/postmaster.pid" ]; then
        "${GRM_PG_AS[@]}" "$bin/pg_ctl" -D "$GRM_PG_DIR/data" -m fast -w -s stop || true
    fi
    rm -rf "$GRM_PG_DIR"
    unset GRM_PG_DIR GRM_TEST_POSTGRES_URL
}
