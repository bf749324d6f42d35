"""`megatiny supervise`: run a launch command, restart it on crashes and hangs, give up when
restarting stops helping. `policy` (when to give up), `events` (the JSON lines log), `watch`
(reading the ranks' heartbeats), `job` (the processes), `supervise` (the loop)."""
