package config

import (
	"github.com/tideline-cdc/tideline/sinks/crm"
	"github.com/tideline-cdc/tideline/sinks/crm/hubspot"
	"github.com/tideline-cdc/tideline/sinks/crm/salesforce"
	"github.com/tideline-cdc/tideline/sinks/crm/webhook"
)

// CRM holds the keys of the CRM sinks (hubspot, salesforce, webhook):
// the declarative mapping every one of them has, and each API's own.
type CRM struct {
	// Object is the CRM object type (HubSpot: contacts, companies…;
	// Salesforce: the SObject, e.g. Contact); free text for a webhook.
	Object string `yaml:"object"`
	// IDProperty is the CRM property that identifies a record (HubSpot's
	// idProperty, Salesforce's external ID field).
	IDProperty string `yaml:"id_property"`
	// Fields maps CRM properties to expressions over the row's columns.
	Fields map[string]string `yaml:"fields"`
	// Where is a row filter expression.
	Where string `yaml:"where"`
	// OnDelete is archive (default), delete or ignore.
	OnDelete string `yaml:"on_delete"`
	// BatchSize is the records per API call.
	BatchSize int `yaml:"batch_size"`
	// RatePerSecond bounds the API requests (a token bucket).
	RatePerSecond float64 `yaml:"rate_per_second"`

	// URL is HubSpot's API base (default https://api.hubapi.com) or the
	// webhook's address.
	URL string `yaml:"url"`
	// Token is HubSpot's private app token, or a static Salesforce
	// access token.
	Token Secret `yaml:"token"`

	// Secret signs webhook bodies (HMAC-SHA256); Headers go with every
	// webhook request.
	Secret  Secret            `yaml:"secret"`
	Headers map[string]string `yaml:"headers"`

	// Salesforce: the org, the API version, and OAuth 2.0 (client
	// credentials: client_id + client_secret; JWT bearer: client_id +
	// username + private_key).
	InstanceURL  string `yaml:"instance_url"`
	APIVersion   string `yaml:"api_version"`
	TokenURL     string `yaml:"token_url"`
	ClientID     string `yaml:"client_id"`
	ClientSecret Secret `yaml:"client_secret"`
	Username     string `yaml:"username"`
	PrivateKey   Secret `yaml:"private_key"`
	Audience     string `yaml:"audience"`
}

// mappingKeys are the keys every CRM sink takes.
var mappingKeys = []string{"object", "id_property", "fields", "where", "on_delete"}

// Mapping is the sink's declarative mapping.
func (s *Sink) Mapping() crm.MappingConfig {
	return crm.MappingConfig{Object: s.Object, IDProperty: s.IDProperty, Fields: s.Fields, Where: s.Where, OnDelete: crm.OnDelete(s.OnDelete)}
}

func (s *Sink) client() crm.ClientConfig { return crm.ClientConfig{RatePerSecond: s.RatePerSecond} }

// HubSpot is a hubspot sink's settings.
func (s *Sink) HubSpot() hubspot.Config {
	return hubspot.Config{Name: s.Name, URL: s.URL, Token: string(s.Token), BatchSize: s.BatchSize, Mapping: s.Mapping(), Client: s.client()}
}

// Salesforce is a salesforce sink's settings.
func (s *Sink) Salesforce() salesforce.Config {
	return salesforce.Config{Name: s.Name, InstanceURL: s.InstanceURL, APIVersion: s.APIVersion, Mapping: s.Mapping(), BatchSize: s.BatchSize,
		Auth: salesforce.Auth{TokenURL: s.TokenURL, ClientID: s.ClientID, ClientSecret: string(s.ClientSecret), Username: s.Username,
			PrivateKey: string(s.PrivateKey), Audience: s.Audience, AccessToken: string(s.Token)},
		Client: s.client()}
}

// Webhook is a webhook sink's settings.
func (s *Sink) Webhook() webhook.Config {
	return webhook.Config{Name: s.Name, URL: s.URL, Secret: string(s.Secret), Headers: s.Headers, BatchSize: s.BatchSize,
		Mapping: s.Mapping(), Client: s.client()}
}

// IsCRM reports whether the sink is a CRM sink (hubspot, salesforce,
// webhook): it takes a mapping, and tideline preview shows its requests.
func (s *Sink) IsCRM() bool {
	switch s.Type {
	case "hubspot", "salesforce", "webhook":
		return true
	}
	return false
}

// crmProblems are a CRM sink's problems that need no source table (the
// mapping's syntax, URLs, credentials); each mapping is checked against
// its tables' columns when the sink starts, and by tideline validate
// --source.
func (s *Sink) crmProblems() crm.Problems {
	switch s.Type {
	case "hubspot":
		return s.HubSpot().Validate()
	case "salesforce":
		return s.Salesforce().Validate()
	case "webhook":
		return s.Webhook().Validate()
	}
	return nil
}
