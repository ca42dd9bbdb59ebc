"""Training data: the synthetic telco-churn generator and loading of users' tables."""
