"""Embedded dev stack: PostgreSQL and a Tansu broker run as child processes of `tierline dev`."""

from tierline.devstack.postgres import PostgresServer
from tierline.devstack.process import ManagedProcess, free_port, wait_for_tcp
from tierline.devstack.tansu import TansuBroker

__all__ = ["ManagedProcess", "PostgresServer", "TansuBroker", "free_port", "wait_for_tcp"]
