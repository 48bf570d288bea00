"""hpbroker.net"""
