"""hpbroker.io"""
