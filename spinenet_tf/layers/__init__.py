"""Building blocks of the SpineNet family (pure keras.ops / keras.layers)."""
