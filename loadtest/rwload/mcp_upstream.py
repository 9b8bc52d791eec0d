"""The MCP server behind the gateways: one tool, `echo`, over stateless streamable HTTP with JSON
responses. Run with the gateway venv's Python (it has `mcp` 2.x and uvicorn):

    loadtest/.venv-gw/bin/python loadtest/rwload/mcp_upstream.py PORT
"""

import sys

import uvicorn
from mcp.server.mcpserver import MCPServer

server = MCPServer("echo-up")


@server.tool()
def echo(text: str = "") -> str:
    """Return the text it was given."""
    return text


def main() -> None:
    port = int(sys.argv[1])
    app = server.streamable_http_app(stateless_http=True, json_response=True)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
