"""What bits mean: bit profiles and concept views, ontology labels and coherence, the six questions."""
