"""Mint gateway JWTs with the gateway's own code (run with the gateway venv's Python, in the
gateway's environment: JWT_SECRET_KEY etc.). Reads a JSON list of
`{"email", "admin": bool, "teams": [..] | null}` on stdin, prints a JSON list of tokens."""

import json
import sys

from mcpgateway.utils.create_jwt_token import _create_jwt_token


def main() -> None:
    out = []
    for u in json.load(sys.stdin):
        out.append(
            _create_jwt_token(
                {"username": u["email"], "sub": u["email"]},
                expires_in_minutes=int(u.get("minutes", 120)),
                user_data={"email": u["email"], "full_name": u["email"], "is_admin": bool(u.get("admin")),
                           "auth_provider": "cli"},
                teams=u.get("teams"),
            )
        )
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
