"""hpbroker.replication"""
