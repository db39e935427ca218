"""adept-cpt: continual pretraining via adaptive expansion and decoupled tuning."""

__version__ = "0.1.0"
