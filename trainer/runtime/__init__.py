"""The process around the loop: distributed start-up and teardown, preemption signals, the run
directory's lock, start-up checks, logging."""
