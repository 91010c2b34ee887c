"""TLS for the pull API with the standard ``ssl`` module: the server's
context from ``[api] tls_cert``/``tls_key``, mutual TLS with
``tls_client_ca`` (the client certificate's CN names the consumer)."""

from __future__ import annotations

import ssl
from pathlib import Path

from vmagent.config import Config
from vmagent.errors import ConfigError


def server_context(cfg: Config) -> ssl.SSLContext | None:
    """None without ``tls_cert``; ConfigError naming the key on bad files."""
    api = cfg.api
    if api.tls_cert is None:
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(api.tls_cert, api.tls_key)
    except (OSError, ssl.SSLError) as err:
        raise ConfigError(cfg.source, "api.tls_cert", f"cannot load "
                          f"{api.tls_cert} with {api.tls_key}: {err}") \
            from None
    if api.tls_client_ca is not None:
        try:
            ctx.load_verify_locations(cafile=str(api.tls_client_ca))
        except (OSError, ssl.SSLError) as err:
            raise ConfigError(cfg.source, "api.tls_client_ca",
                              f"cannot load {api.tls_client_ca}: {err}") \
                from None
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def client_context(cacert: Path | None, cert: Path | None,
                   key: Path | None) -> ssl.SSLContext:
    """For ``vmagent pull``: verify the agent against ``cacert`` (or the
    system store) and present ``cert``/``key`` for mutual TLS."""
    ctx = ssl.create_default_context(cafile=str(cacert) if cacert else None)
    if cert is not None:
        ctx.load_cert_chain(cert, key)
    return ctx


def peer_common_name(sock: object) -> str | None:
    """The CN of a verified client certificate, if there is one."""
    getpeercert = getattr(sock, "getpeercert", None)
    cert = getpeercert() if getpeercert else None
    for rdn in (cert or {}).get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None
