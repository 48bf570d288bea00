"""hpbroker.client"""
