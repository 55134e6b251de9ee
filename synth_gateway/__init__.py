"""synth_gateway."""
