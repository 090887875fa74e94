"""Everything a platform team applies, rendered from a profile: Kubernetes manifests (one
Deployment per service, as the split topology runs them) and the BentoCloud deployment file."""
