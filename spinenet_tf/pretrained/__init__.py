"""Published SpineNet checkpoints: reading them, mapping their variables to ours, presets."""
