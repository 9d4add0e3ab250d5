"""Dock widgets: CT window presets, chat panel, rating widget, curator panel, finetune panel."""
