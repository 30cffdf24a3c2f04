"""What the command line does besides training: the dry-run's plan and pre-flight, the demo
teacher's build and its cache."""
