"""hpbroker.protocol"""
