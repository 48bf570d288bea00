"""hpbroker.ring"""
