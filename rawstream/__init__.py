"""rawstream: a pure-asyncio streaming server for local AI models.

HTTP/1.1 and WebSocket are spoken directly through the sans-I/O state machines h11
and wsproto; tokens come from a GGUF model running in the same process.

Package layout (each ring may import only the rings to its right)::

    cli -> app -> server (asyncio)  -> sansio (pure)
              -> engine (threads, llama_cpp) -^
"""

__version__ = "0.1.0"
