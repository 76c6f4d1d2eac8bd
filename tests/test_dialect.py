"""`MySQLDialect`: what differs between MySQL 8.0, MySQL 8.4+ and MariaDB, decided from the
server's VERSION() string."""

from __future__ import annotations

import pytest
from pymysqlreplication import BinLogStreamReader

from datasources.connectors.mysql import MySQLDialect, MySQLSource

# What SELECT VERSION() returns on each server (distribution builds add suffixes).
MYSQL_80 = "8.0.36-0ubuntu0.22.04.1"
MYSQL_84 = "8.4.3"
MYSQL_9 = "9.1.0-commercial"
MARIADB_104 = "10.4.32-MariaDB"
MARIADB_105 = "10.5.23-MariaDB-1:10.5.23+maria~ubu2004-log"
MARIADB_1011 = "10.11.6-MariaDB-0+deb12u1"
MARIADB_114 = "11.4.2-MariaDB"

MYSQL = [MYSQL_80, MYSQL_84, MYSQL_9]
MARIADB = [MARIADB_104, MARIADB_105, MARIADB_1011, MARIADB_114]


def dialect(version: str) -> MySQLDialect:
    return MySQLDialect.from_version_string(version)


@pytest.mark.parametrize(("version", "is_mariadb", "parsed"), [
    (MYSQL_80, False, (8, 0, 36)),
    (MYSQL_84, False, (8, 4, 3)),
    (MYSQL_9, False, (9, 1, 0)),
    (MARIADB_105, True, (10, 5, 23)),
    (MARIADB_1011, True, (10, 11, 6)),
])
def test_version_string_is_parsed(version, is_mariadb, parsed):
    assert dialect(version) == MySQLDialect(is_mariadb=is_mariadb, version=parsed)


# -- binlog status --------------------------------------------------------------------------


@pytest.mark.parametrize(("version", "sql"), [
    (MYSQL_80, "SHOW MASTER STATUS"),
    ("8.3.0", "SHOW MASTER STATUS"),  # the last release that has it
    (MYSQL_84, "SHOW BINARY LOG STATUS"),  # 8.4 removed SHOW MASTER STATUS
    ("8.4.0", "SHOW BINARY LOG STATUS"),
    (MYSQL_9, "SHOW BINARY LOG STATUS"),
    # MariaDB's version numbers are above 8.4 but it keeps SHOW MASTER STATUS.
    (MARIADB_105, "SHOW MASTER STATUS"),
    (MARIADB_1011, "SHOW MASTER STATUS"),
    (MARIADB_114, "SHOW MASTER STATUS"),
])
def test_binlog_status_sql(version, sql):
    assert dialect(version).binlog_status_sql == sql


# -- privileges -----------------------------------------------------------------------------


@pytest.mark.parametrize(("version", "privileges"), [
    (MYSQL_80, ("REPLICATION CLIENT",)),
    (MYSQL_84, ("REPLICATION CLIENT",)),
    (MARIADB_104, ("REPLICATION CLIENT",)),  # before the split
    # 10.5 split REPLICATION CLIENT: BINLOG MONITOR is named first (it is what a GRANT should say),
    # REPLICATION CLIENT is still accepted as the name an older grant shows.
    (MARIADB_105, ("BINLOG MONITOR", "REPLICATION CLIENT")),
    (MARIADB_1011, ("BINLOG MONITOR", "REPLICATION CLIENT")),
])
def test_replication_client_privileges(version, privileges):
    assert dialect(version).replication_client_privileges == privileges


@pytest.mark.parametrize("version", MYSQL + MARIADB)
def test_replication_slave_accepts_both_spellings(version):
    # MySQL 8.0.26+ shows REPLICATION REPLICA in some places; either grants the binlog dump.
    assert set(dialect(version).replication_slave_privileges) == {"REPLICATION SLAVE", "REPLICATION REPLICA"}
    assert "SUPER" not in dialect(version).replication_slave_privileges


# -- snapshot position ----------------------------------------------------------------------


@pytest.mark.parametrize("version", MARIADB)
def test_mariadb_reads_the_position_of_the_snapshot_itself(version):
    d = dialect(version)
    assert d.snapshot_position_sql() == ["SHOW STATUS LIKE 'binlog_snapshot_%'"]
    assert d.note_position_first is False


@pytest.mark.parametrize("version", MYSQL)
def test_mysql_notes_the_position_before_the_snapshot(version):
    d = dialect(version)
    assert d.snapshot_position_sql() == []  # MySQL has no binlog_snapshot_* status variables
    assert d.note_position_first is True


@pytest.mark.parametrize("version", MYSQL)
def test_mysql_position_from_status_row(version):
    # A row of SHOW MASTER STATUS / SHOW BINARY LOG STATUS as a DictCursor returns it.
    row = {"File": "binlog.000003", "Position": 157, "Binlog_Do_DB": "", "Binlog_Ignore_DB": "",
           "Executed_Gtid_Set": "3e11fa47-71ca-11e1-9e33-c80aa9429562:1-5"}
    assert dialect(version).position_from_status(row) == {"file": "binlog.000003", "pos": 157}
    # Positions arriving as text are made integers.
    row["Position"] = "4"
    assert dialect(version).position_from_status(row)["pos"] == 4


@pytest.mark.parametrize("version", MARIADB)
def test_mariadb_position_is_the_gtid(version):
    status = {"binlog_snapshot_file": "binlog.000002", "binlog_snapshot_position": "1163"}
    d = dialect(version)
    assert d.position_from_status(status, gtid="0-1-42") == {"gtid": "0-1-42"}
    assert d.position_from_status(status, gtid="0-1-42,1-2-7") == {"gtid": "0-1-42,1-2-7"}
    # A server that logged no transaction yet has an empty GTID state, never None.
    assert d.position_from_status(status, gtid=None) == {"gtid": ""}


# -- resuming the stream --------------------------------------------------------------------


@pytest.mark.parametrize("version", MARIADB)
def test_mariadb_resumes_by_gtid(version):
    d = dialect(version)
    assert d.stream_kwargs({"gtid": "0-1-42,1-2-7"}) == {"is_mariadb": True, "auto_position": "0-1-42,1-2-7"}
    # An empty GTID state is no GTID at all (an empty string would be sent as a position).
    assert d.stream_kwargs({"gtid": ""}) == {"is_mariadb": True, "auto_position": None}
    # A file/pos left in the position is not used: MariaDB resumes by GTID only.
    assert "log_file" not in d.stream_kwargs({"gtid": "0-1-42", "file": "binlog.000002", "pos": 1163})


@pytest.mark.parametrize("version", MYSQL)
def test_mysql_resumes_by_file_and_position(version):
    kwargs = dialect(version).stream_kwargs({"file": "binlog.000003", "pos": "157"})
    # Without resume_stream=True the library would start at offset 4 of the file, ignoring log_pos.
    assert kwargs == {"resume_stream": True, "log_file": "binlog.000003", "log_pos": 157}
    assert "is_mariadb" not in kwargs and "auto_position" not in kwargs


@pytest.mark.parametrize(("version", "position"), [
    (MYSQL_80, {"file": "binlog.000003", "pos": 157}),
    (MYSQL_84, {"file": "binlog.000003", "pos": 157}),
    (MARIADB_1011, {"gtid": "0-1-42"}),
])
def test_stream_kwargs_are_what_the_replication_library_takes(version, position):
    """The reader is built (it connects only when read) with exactly the resume point."""
    reader = BinLogStreamReader(
        connection_settings={"host": "127.0.0.1", "port": 1, "user": "x", "passwd": ""}, server_id=4242,
        enable_logging=False, **dialect(version).stream_kwargs(position),
    )
    if "gtid" in position:
        assert (reader.is_mariadb, reader.auto_position) == (True, "0-1-42")
    else:
        assert (reader.is_mariadb, reader.auto_position) == (False, None)
        assert (reader.log_file, reader.log_pos) == ("binlog.000003", 157)


# -- against the real MariaDB -----------------------------------------------------------------


def test_dialect_statements_run_on_the_private_mariadb(mariadb):
    source = MySQLSource(host="127.0.0.1", port=mariadb.port, user="root", password="", database="mysql")
    conn = source.connect()
    try:
        d = source.dialect(conn)
        assert d.is_mariadb and d.version >= (10, 5, 0)
        assert d.replication_client_privileges[0] == "BINLOG MONITOR"
        with conn.cursor() as cur:
            cur.execute(d.binlog_status_sql)
            names = [col[0] for col in cur.description]
            assert names[:2] == ["File", "Position"]
            cur.execute("START TRANSACTION WITH CONSISTENT SNAPSHOT")
            status = {}
            for sql in d.snapshot_position_sql():
                cur.execute(sql)
                status.update({name.lower(): value for name, value in cur.fetchall()})
            cur.execute("COMMIT")
        assert {"binlog_snapshot_file", "binlog_snapshot_position"} <= set(status)
        assert status["binlog_snapshot_file"].startswith("binlog.")
    finally:
        conn.close()

