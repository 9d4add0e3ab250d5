"""Files that training and evaluation share: 3D-RAD-layout QA folders, volume indexes, JSON records.
"""
