"""etcd endpoints as etcd users write them (etcdctl's ``--endpoints``, ``ETCDCTL_*``), and registry URLs
with credentials and TLS files given apart: parsing and composing only, nothing is contacted.
test_endpoints.py opens each form against a real etcd."""

from __future__ import annotations

import pytest

from openrange_mesh.config import Settings, registry_url
from openrange_mesh.errors import ConfigError
from openrange_mesh.registry import open_registry
from openrange_mesh.registry.etcd import EtcdRegistry, parse_url


@pytest.mark.parametrize(
    ("text", "protocol", "endpoints"),
    [
        ("h1:2379", "http", [("h1", 2379)]),
        ("h1", "http", [("h1", 2379)]),
        ("http://h1:2380", "http", [("h1", 2380)]),
        ("https://h1", "https", [("h1", 2379)]),
        (" http://a:1/ , http://b:2 ", "http", [("a", 1), ("b", 2)]),
        ("https://a:1,b:2", "https", [("a", 1), ("b", 2)]),  # a bare item takes the list's scheme
        ("a:1,https://b:2", "https", [("a", 1), ("b", 2)]),
        ("[::1]:2379", "http", [("::1", 2379)]),
        ("http://[::1]:2379,[fe80::1]", "http", [("::1", 2379), ("fe80::1", 2379)]),
        ("etcd://h1,h2:1", "http", [("h1", 2379), ("h2", 1)]),
        ("etcd+https://[::1]:1", "https", [("::1", 1)]),
    ],
)
def test_endpoint_forms(text: str, protocol: str, endpoints: list[tuple[str, int]]) -> None:
    target = parse_url(text)
    assert (target.protocol, list(target.endpoints)) == (protocol, endpoints)
    registry = open_registry(text)  # lazy: nothing is contacted
    assert isinstance(registry, EtcdRegistry)
    registry.close()


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("", "empty endpoint"),
        ("a:2379,,b:2379", "empty endpoint"),
        ("a:2379,", "empty endpoint"),
        ("http://", "empty endpoint"),
        ("h:0", "bad host"),
        ("h:65536", "bad host"),
        ("http://h:port", "bad host"),
        ("h:", "bad host"),
        ("::1:2379", "[addr]:port"),
        ("http://[::1:2379", "bad host"),
        ("http://a:1,https://b:2", "mix http:// and https://"),
        ("a:1,http://b:2,https://c:3", "mix http:// and https://"),
        ("ftp://h:1", "unknown scheme"),
        ("h1,etcd://h2", "unknown scheme"),
        ("http://h:2379/v3", "no path or query"),
        ("https://h:2379?cacert=/ca.pem", "no path or query"),
        ("http://root:s3cret@h:2379", "--user"),
        ("h:1,http://root:s3cret@h:2", "--user"),
    ],
)
def test_bad_endpoints_are_one_line_config_errors(text: str, says: str) -> None:
    with pytest.raises(ConfigError) as bad:
        EtcdRegistry(text)
    message = str(bad.value)
    assert says in message and "\n" not in message
    assert "s3cret" not in message


def test_unknown_scheme_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError) as bad:
        open_registry("ftp://root:s3cret@h:1")
    for scheme in ("memory://", "etcd://", "etcd+https://", "http://", "https://", "host:port"):
        assert scheme in str(bad.value)
    assert "s3cret" not in str(bad.value)


# -- credentials and TLS files given apart (flags > OPENRANGE_* > ETCDCTL_*) ---------------------


def test_tls_files_make_bare_endpoints_https_and_plain_ones_an_error() -> None:
    files = {"cacert": "/ca.pem", "cert": "/c.pem", "key": "/k.pem"}
    url = registry_url("https://a:1,https://[::1]:2", files, env={})
    assert url == "etcd+https://a:1,[::1]:2?cacert=%2Fca.pem&cert=%2Fc.pem&key=%2Fk.pem"
    target = parse_url(url)
    assert (target.cacert, target.cert, target.key) == ("/ca.pem", "/c.pem", "/k.pem")
    assert parse_url(registry_url("a:1", {"cacert": "/ca.pem"}, env={})).protocol == "https"  # as etcdctl does
    for plain in ("http://a:1", "etcd://a:1"):
        with pytest.raises(ConfigError, match="plain http"):
            registry_url(plain, {"cacert": "/ca.pem"}, env={})
    # etcdctl's own variables are mere defaults: plain endpoints drop them, as etcdctl does.
    assert registry_url("http://a:1", env={"ETCDCTL_CACERT": "/ca.pem"}) == "etcd+http://a:1"
    with pytest.raises(ConfigError, match="certificate and its key together"):
        registry_url("https://a:1", {"cert": "/c.pem"}, env={})


def test_each_setting_takes_the_flag_then_ours_then_etcdctls() -> None:
    env = {"OPENRANGE_CACERT": "/ours.pem", "ETCDCTL_CACERT": "/theirs.pem", "ETCDCTL_CERT": "/c.pem"}
    env |= {"ETCDCTL_KEY": "/k.pem"}

    def cacert(flags: dict[str, str | None], env: dict[str, str]) -> str | None:
        return parse_url(registry_url("h:1", flags, env)).cacert

    assert cacert({"cacert": "/flag.pem"}, env) == "/flag.pem"
    assert cacert({}, env) == "/ours.pem"
    assert cacert({}, {k: v for k, v in env.items() if k != "OPENRANGE_CACERT"}) is None  # see below
    assert parse_url(registry_url(None, {}, {**env, "ETCDCTL_ENDPOINTS": "h:1"})).cacert == "/ours.pem"
    assert parse_url(registry_url("h:1", {}, env)).cert == "/c.pem"  # filled in setting by setting

    layered = {"ETCDCTL_ENDPOINTS": "http://theirs:1", "OPENRANGE_ETCD": "https://ours:1"}
    assert Settings.load({"host_id": "h"}, env=layered).registry == "https://ours:1"
    assert Settings.load({"host_id": "h", "registry": "flag:1"}, env=layered).registry == "etcd://flag:1"
    assert Settings.load({"host_id": "h"}, env={"ETCDCTL_ENDPOINTS": "http://theirs:1"}).registry == "http://theirs:1"
    assert Settings.load({"host_id": "h"}, env={}).registry == "memory://"


def test_users_and_passwords() -> None:
    def target(flags: dict[str, str | None], env: dict[str, str], url: str = "h:1") -> tuple[str | None, ...]:
        parsed = parse_url(registry_url(url, flags, env))
        return parsed.user, parsed.password

    assert target({"user": "root:pa:ss@/?"}, {}) == ("root", "pa:ss@/?")  # etcdctl splits at the first ":"
    assert target({"user": "root", "password": "pw"}, {}) == ("root", "pw")
    assert target({}, {"ETCDCTL_USER": "root", "ETCDCTL_PASSWORD": "pw"}) == ("root", "pw")
    assert target({"user": "admin:x"}, {"ETCDCTL_USER": "root:pw"}) == ("admin", "x")
    assert target({"user": "admin"}, {"ETCDCTL_PASSWORD": "pw"}) == ("admin", "pw")  # a password alone
    assert target({}, {"ETCDCTL_USER": "bob:pw"}, url="etcd://root:s3cret@h") == ("root", "s3cret")  # the URL wins
    with pytest.raises(ConfigError, match="given twice") as twice:
        target({"user": "root:s3cret", "password": "s3cret2"}, {})
    with pytest.raises(ConfigError, match="has no password") as alone:
        target({"user": "root"}, {"ETCDCTL_USER": "bob:s3cret"})  # bob's password is not root's
    with pytest.raises(ConfigError, match="contradicts the URL") as contradicted:
        target({"password": "other"}, {}, url="etcd://root:s3cret@h")
    for error in (twice, alone, contradicted):
        assert "s3cret" not in str(error.value) and "\n" not in str(error.value)
    settings = Settings.load({"host_id": "h", "registry": "h:1", "user": "root:s3cret"}, env={})
    assert "s3cret" in settings.registry and "s3cret" not in repr(settings)


def test_etcdctls_tls_files_make_only_etcdctls_bare_endpoints_https() -> None:
    """ETCDCTL_CACERT and friends describe etcdctl's etcd: they must not turn a plain local etcd
    named apart (``openrange-mesh up`` runs one) into an https one."""
    files = {"ETCDCTL_CACERT": "/ca.pem", "ETCDCTL_CERT": "/c.pem", "ETCDCTL_KEY": "/k.pem"}
    assert registry_url("127.0.0.1:1", env=files) == "etcd+http://127.0.0.1:1"
    assert registry_url(None, env={**files, "OPENRANGE_ETCD": "127.0.0.1:1"}) == "etcd+http://127.0.0.1:1"
    theirs = parse_url(registry_url(None, env={**files, "ETCDCTL_ENDPOINTS": "h:1,h:2"}))
    assert (theirs.protocol, theirs.cacert, theirs.cert) == ("https", "/ca.pem", "/c.pem")
    named = parse_url(registry_url("https://h:1", env=files))  # https endpoints named apart take them
    assert (named.protocol, named.cacert, named.key) == ("https", "/ca.pem", "/k.pem")


def test_url_options_and_apart_must_agree_but_etcdctls_give_way() -> None:
    url = "etcd+https://h:1?cacert=/url.pem&timeout=2"
    assert registry_url(url, {"cacert": "/url.pem"}, env={}) == "etcd+https://h:1?cacert=%2Furl.pem&timeout=2"
    with pytest.raises(ConfigError, match=r"cacert '/flag\.pem' contradicts the URL"):
        registry_url(url, {"cacert": "/flag.pem"}, env={})
    assert parse_url(registry_url(url, env={"ETCDCTL_CACERT": "/theirs.pem"})).cacert == "/url.pem"


def test_memory_takes_no_credentials() -> None:
    with pytest.raises(ConfigError, match="not a memory:// registry"):
        registry_url("memory://x", {"user": "root:pw"}, env={})
    assert registry_url("memory://x", env={"ETCDCTL_USER": "root:pw"}) == "memory://x"
