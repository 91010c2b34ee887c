"""The agent's servers: the HTTP pull API and the local control socket."""
