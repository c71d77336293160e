"""Tools on top of everything, imported by nothing in the product: the CLI, the demo, replay,
benchmarks, the simulator's Kafka loop, segment export and the embedded broker."""
