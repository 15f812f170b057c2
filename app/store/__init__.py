"""The shared cache: Redis for every worker of every host, or one process's memory, behind one contract."""
