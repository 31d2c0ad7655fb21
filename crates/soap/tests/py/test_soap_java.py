"""Java's JAX-WS (Debian's `jaxws`, installed by scripts/setup-clients): `wsimport`
generates stubs from the live WSDL, and a client compiled against them calls the SOAP 1.1
and SOAP 1.2 ports, fault detail included."""

from __future__ import annotations

import glob
import os
import subprocess
from pathlib import Path

CLIENT = Path(__file__).resolve().parents[1] / "java" / "Client.java"


def classpath(out: Path) -> str:
    jars = [j for j in glob.glob("/usr/share/java/*.jar") if any(k in os.path.basename(j) for k in (
        "jaxws", "jaxb", "saaj", "stax-ex", "streambuffer", "policy", "gmbal", "management-api", "activation", "ha-api", "mimepull", "fastinfoset", "istack"))]
    return os.pathsep.join([str(out), *jars])


def run(*cmd: str, cwd: Path) -> str:
    p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, f"{cmd[0]} failed:\n{p.stdout}\n{p.stderr}"
    return p.stdout


def test_wsimport_stubs_call_both_ports(blog, tmp_path):
    out = tmp_path / "classes"
    out.mkdir()
    run("wsimport", "-extension", "-quiet", "-d", str(out), "-p", "polyport.client", f"{blog.url}/soap?wsdl", cwd=tmp_path)
    run("javac", "-cp", classpath(out), "-d", str(out), str(CLIENT), cwd=tmp_path)
    lines = run("java", "-cp", classpath(out), "Client", f"{blog.url}/soap?wsdl", cwd=tmp_path).splitlines()
    assert len(lines) == 8, lines
    for port in (lines[:4], lines[4:]):
        user, created, updated, fault = port
        assert user == "user john_doe"
        assert created.startswith("created ") and created.endswith(" v1 [jvm, jax-ws]"), created
        assert updated == "updated v2 edited"
        assert fault == "fault record_not_found"
