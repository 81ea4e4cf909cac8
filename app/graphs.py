"""The image tree for the browser: relayed from the daemon, for the visitor's own host only.

The daemon builds the tree (networkx), lays it out (Graphviz) and answers for one host per
socket; this module only passes the browser's questions on, on the visitor's own host's
socket (``current_host()``: from the signed cookie, never from what the browser sends).

  ``tree``       {signature?}        → ``GET /glassbox/tree``: graph, layout, signature
                                       (with the signature the browser has: only
                                       ``{signature, unchanged: true}`` if nothing changed)
  ``tree.node``  {id}                → ``GET /glassbox/tree/node?id=…``: one node's details
  ``tree.weak``  {layers} | {path, digest?} → ``POST /glassbox/tree/weak``: what they affect

The daemon checks every input and says what is wrong; the checks here only keep what is
sent to it small and well-formed.
"""
from __future__ import annotations

from urllib.parse import quote

from .live import answer_errors, current_host, read_only
from .socketio import socketio

# Seconds for one answer: a cold tree of a thousand images takes the daemon about one.
TREE_TIMEOUT = 30.0
MAX_ID = 200


@socketio.on("tree")
@answer_errors
def tree(message=None):
    known = (message or {}).get("signature") if isinstance(message, dict) else None
    if known is not None and (not isinstance(known, str) or len(known) > 64):
        return {"error": "signature must be the one the last tree answer gave"}
    path = "/glassbox/tree" + (f"?signature={quote(known, safe='')}" if known else "")
    return current_host().client(timeout=TREE_TIMEOUT).get_json(path)


@socketio.on("tree.node")
@answer_errors
def tree_node(message=None):
    ident = message.get("id") if isinstance(message, dict) else None
    if not isinstance(ident, str) or not ident or len(ident) > MAX_ID:
        return {"error": f"tree.node needs a node's id (a string of at most {MAX_ID} characters)"}
    return current_host().client(timeout=TREE_TIMEOUT).get_json(
        f"/glassbox/tree/node?id={quote(ident, safe='')}")


@socketio.on("tree.weak")
@answer_errors
def tree_weak(message=None):
    if not isinstance(message, dict):
        return {"error": "tree.weak needs {layers: [layer ids]} or {path: '/bin/busybox'}"}
    if read_only():
        return {"error": "this is the instructor's host: you can look, not analyse it"}
    body = {k: message[k] for k in ("layers", "path", "digest") if k in message}
    return current_host().client(timeout=TREE_TIMEOUT).call("POST", "/glassbox/tree/weak", body)
