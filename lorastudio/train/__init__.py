"""Training: config, recommender, packing, the trainer loop."""
