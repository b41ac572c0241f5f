"""What goes into a report: any supported object (:mod:`.sources`) made a :class:`~.run.Run`."""
