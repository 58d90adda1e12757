"""Search strategies that move θ (zeroth-order, evolutionary, white-box), their
gradient estimators and step rules."""
