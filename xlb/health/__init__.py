"""Health checking with keepalived's semantics: a checker spec model (``spec``), one module per checker kind
(``tcp``, ``http``, ``sslget``, ``misc``, ``dns``, ``udp``, ``ping``, ``smtp``, ``file``) implementing the one
interface of ``checker``, keepalived.conf checker blocks read into the spec (``kaconf``), the pure state machine
that turns results into effects (``state``: retries, alpha, quorum, sorry server, notifies), commands run without
a shell (``commands``), and the asyncio engine that schedules every check on one event loop (``engine``). Modules
here import only the standard library, ``xlb.errors`` and each other: no bcc, no data plane; the daemon turns the
reported effects into map updates."""
