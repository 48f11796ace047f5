"""What the accelerator's gateware (``hw/``), generator (``gen/``), host (``host/``) and
benches share, defined once, with no gateware: the configuration, buffer and descriptor
layouts, the link protocol, the counter map, the tiling, the cycle model and the build
bundle's host files. It imports only ``models/`` (the numerical contract) and Amaranth's
layout and enum types."""
