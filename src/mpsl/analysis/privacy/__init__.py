"""What a curious server can infer from the MPSL messages, and what the privacy settings guarantee."""

from mpsl.analysis.privacy.accountant import PrivacySpent, privacy_spent

__all__ = ["PrivacySpent", "privacy_spent"]
