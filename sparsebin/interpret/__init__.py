"""What bits mean: bit profiles and concept views, ontology labels and coherence, comparing runs, the six questions."""
