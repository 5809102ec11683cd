"""The identity provider and Graph fakes in a process of their own (for benchmarks and drills).

    python benchmarks/fakes_proc.py --tls DIR --app-id ID --app-secret S --admin-group G \
        --admins A,B

Prints one JSON line when ready: the addresses the bot is configured with, the channel signing
key (so the load generator can sign activities as the Bot Connector does) and the public key
of the Entra tokens (so the fake connector, in another process, can check the bot's token).
Exits when stdin closes.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cryptography.hazmat.primitives import serialization  # noqa: E402

from benchmarks.harness import tls_files  # noqa: E402
from tests.fakes.graph import FakeGraph  # noqa: E402
from tests.fakes.identity import FakeIdentityProvider  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tls", required=True)
    parser.add_argument("--app-id", required=True)
    parser.add_argument("--app-secret", required=True)
    parser.add_argument("--admin-group", required=True)
    parser.add_argument("--admins", default="")
    args = parser.parse_args()
    tls = tls_files(Path(args.tls))
    with FakeIdentityProvider(tls=tls) as idp, FakeGraph(idp, tls=tls) as graph:
        idp.register_app(args.app_id, args.app_secret)
        admins = [a for a in args.admins.split(",") if a]
        for i, oid in enumerate(admins):
            graph.add_user(oid, f"admin{i}@provider.example", f"Admin {i}")
        graph.add_group(args.admin_group, admins, display_name="Fusion admins")
        key = idp.channel_keys[idp.default_kid]
        info = {
            "tenant_id": idp.tenant_id,
            "authority_base": idp.base_url,
            "channel_metadata_url": idp.channel_metadata_url,
            "graph_url": graph.graph_url,
            "connector_token_url": f"{idp.base_url}/botframework.com/oauth2/v2.0/token",
            "channel_kid": key.kid,
            "channel_private_pem": key.private_key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ).decode(),
            "entra_public_pem": idp.entra_key.public_pem().decode(),
            "entra_kid": idp.entra_key.kid,
        }
        print(json.dumps(info), flush=True)
        sys.stdin.buffer.read()  # until the parent closes our stdin (or dies)
        counts = {
            "identity_requests": idp.call_count,
            "token_requests": idp.token_request_count,
            "graph_requests": graph.call_count,
        }
        print(json.dumps(counts), file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
